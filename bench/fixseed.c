/*
** fixseed: fixed hash seeds, for counting instructions.  make bench
** BASE=<rev> preloads it under callgrind.  A hash seed can put a collision
** in a lookup, a few more instructions: random seeds make counts differ
** between runs.  Here every seed follows from TL_BENCH_SEED (default 1):
**   time()                   PUC Lua seeds its string hashes with it
**   getrandom()              the module seeds its shared tables with it
**   syscall(SYS_getrandom)   LuaJIT seeds its PRNG (string hashes) with it
*/
#define _GNU_SOURCE /* syscall, RTLD_NEXT */

#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t fs_seed(void) {
  const char *s = getenv("TL_BENCH_SEED");
  return s != NULL ? (uint64_t)strtoull(s, NULL, 10) : 1;
}

/* Fills buf with bytes of a fixed sequence (splitmix64 of the seed). */
static void fs_fill(void *buf, size_t len) {
  uint64_t x = fs_seed();
  unsigned char *p = (unsigned char *)buf;
  while (len > 0) {
    uint64_t z = (x += 0x9e3779b97f4a7c15u);
    size_t n = len < sizeof z ? len : sizeof z;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    memcpy(p, &z, n);
    p += n;
    len -= n;
  }
}

time_t time(time_t *t) {
  time_t now = (time_t)fs_seed();
  if (t != NULL) *t = now;
  return now;
}

ssize_t getrandom(void *buf, size_t len, unsigned int flags) {
  (void)flags;
  fs_fill(buf, len);
  return (ssize_t)len;
}

/* Other calls go on to the C library's syscall, with the six arguments
** any system call may take (the extra ones are ignored). */
long syscall(long number, ...) {
  static long (*next)(long, ...);
  long a[6];
  va_list ap;
  int i;
  va_start(ap, number);
  for (i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_getrandom) {
    fs_fill((void *)a[0], (size_t)a[1]);
    return a[1];
  }
  if (next == NULL) {
    void *sym = dlsym(RTLD_NEXT, "syscall");
    memcpy(&next, &sym, sizeof next); /* a function pointer, as dlsym's contract says */
  }
  return next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
