/*
** tl_core.h: the core's data structures.  Part of threadlocal.c.
**
** The core is plain C on pthreads.  It holds the allocator hook, the
** shared tables, thread records, homes and slabs, thread exit and fork.
** It also holds the registry of shared locals by name, and the C API.
** In threadlocal.c it comes before lua.h, so no core function can touch
** a lua_State.  A thread exit hook runs while another thread may run any
** state.
**
** Glossary (one name per concept):
**   `shared local`  threadlocal_shared, process-wide, found by name; `sl`.
**   `fields`  one thread's data in one local.  A Lua table for a Local,
**             a tl_tab for a shared local.
**   `thread`  a tl_thread: the record of one OS thread, by its id.
**   `owner`   the tl_thread * that holds a table.  `owner_id` is a
**             thread's id, kept where a pointer could dangle.
**   `home`    the C side of a Lua state that holds Locals.
**   `slab`    a thread's array of its live tables.  A proxy or node names
**             one by (slot, generation), not by pointer.
**   `run`     a snapshot installed by threadlocal_snapshot_install or
**             threadlocal.run.  Slots mark the run that swapped them.
**   `status`  an entry's TL_EMPTY, TL_LIVE or TL_DEAD.
**   `copy`    tl_*_clone is a deep copy.  A string copy is tl_strdup.
*/
#ifndef TL_CORE_H
#define TL_CORE_H

#ifdef lua_h
#error "the core is compiled before lua.h and must not use Lua"
#endif

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#include <sys/random.h>
#define TL_GETRANDOM 1
#endif

#include "threadlocal.h"

#if defined(__GNUC__)
#define tl_unlikely(x) __builtin_expect(!!(x), 0)
#define TL_HOT inline __attribute__((always_inline)) /* on every shared access */
#define TL_NORETURN __attribute__((noreturn))
#define TL_NOINLINE __attribute__((noinline))
#define TL_MAYBE_UNUSED __attribute__((unused))
#define tl_unreachable() __builtin_unreachable()
#else
#define tl_unlikely(x) (x)
#define TL_HOT inline
#define TL_NORETURN
#define TL_NOINLINE
#define TL_MAYBE_UNUSED
#define tl_unreachable() ((void)0)
#endif

/*
** Every access reads the thread-local id.  The initial-exec model makes
** that one load instead of a call to __tls_get_addr.  A dlopen()ed module
** may use it only where the C library keeps static TLS room for modules.
** On glibc it does (we use 24 bytes, 64 on LuaJIT).  With musl it fails to
** load, and musl has no macro of its own.  So every C library but glibc
** gets the default model.  The uClibc library defines __GLIBC__ too, and
** is not known to keep that room.
** Packagers: -DTL_TLS_INITIAL_EXEC forces initial-exec, -DTL_TLS_DYNAMIC
** the default model.
*/
#if defined(TL_TLS_DYNAMIC) && defined(TL_TLS_INITIAL_EXEC)
#error "define TL_TLS_DYNAMIC or TL_TLS_INITIAL_EXEC, not both"
#elif defined(TL_TLS_INITIAL_EXEC) && !defined(__GNUC__)
#error "TL_TLS_INITIAL_EXEC needs a compiler with GNU C's tls_model attribute"
#elif defined(__GNUC__) && !defined(TL_TLS_DYNAMIC) && \
    (defined(TL_TLS_INITIAL_EXEC) || (defined(__GLIBC__) && !defined(__UCLIBC__)))
#define TL_TLS_MODEL __attribute__((tls_model("initial-exec")))
#else
#define TL_TLS_MODEL
#endif

/*
** Nesting of shared tables.  A table is at most TL_MAXDEPTH levels below
** its thread's fields table, from Lua tables or copied from proxies alike.
** So every walk (free, copy, compare, thread exit) has bounded recursion.
*/
#define TL_MAXDEPTH THREADLOCAL_MAXDEPTH

/* Counters for the hostile-input test (spec/c/hostile_test.c), which
** defines TL_STATS; without it they compile to nothing. */
#ifdef TL_STATS
static size_t tl_stat_probes;   /* slots looked at: lookups, inserts, registry */
static size_t tl_stat_rehashes; /* tables rebuilt */
static size_t tl_stat_moved;    /* entries moved by those rebuilds */
#define TL_STAT(x) ((void)(x))
#else
#define TL_STAT(x) ((void)0)
#endif

/* Shared values: plain data, copied in, owned by one thread.  TL_TSHORT is
** only ever a key: a string of at most TL_SHORTKEY bytes kept in place. */
enum { TL_TNIL, TL_TBOOL, TL_TINT, TL_TFLOAT, TL_TSTR, TL_TPTR, TL_TTAB, TL_TSHORT };

struct tl_tab;

#define TL_SHORTKEY 15

typedef union tl_u {
  int b;
  int64_t i;
  double f;
  struct {
    char *s; /* NUL-terminated copy */
    size_t len;
  } str;
  struct {
    void *p;
    void (*dtor)(void *); /* only on a field set from C */
  } ptr;
  struct tl_tab *tab;
  char c[TL_SHORTKEY + 1]; /* TL_TSHORT: the bytes, NUL-padded; c[15] is 15 - len */
} tl_u;

typedef struct tl_val {
  tl_u u;
  unsigned char type;
} tl_val;

/* A key to look up: bool, int, float (non-integral) or a borrowed string. */
typedef struct tl_key {
  unsigned char type;
  uint32_t hash;
  union {
    int b;
    int64_t i;
    double f;
    struct {
      const char *s;
      size_t len;
    } str;
  } u;
} tl_key;

enum { TL_EMPTY, TL_LIVE, TL_DEAD };

/*
** An entry: 40 bytes on 64-bit machines.  As in Lua 5.4's table nodes,
** the key's type, the status and the hash live in val's padding.  So val
** is never assigned as a whole, which could overwrite them.  Only its
** members are, as tl_entry_setval does.  Short string keys sit in place;
** longer ones are a NUL-terminated copy.
*/
typedef struct tl_entry {
  tl_u key; /* by ktype: TL_TSHORT, TL_TSTR, TL_TINT, TL_TFLOAT, TL_TBOOL */
  union {
    tl_val val;
    struct {
      tl_u valu_;              /* val.u */
      unsigned char valtype_;  /* val.type */
      unsigned char ktype, status;
      uint32_t hash;
    };
  };
} tl_entry;

struct tl_thread;

/*
** A hash table of shared values, laid out as CPython's dicts.  The entries
** sit in insertion order in e[].  Deleted ones stay, marked dead, until the
** next rebuild compacts them.  A small index of slots holds entry numbers
** (+1; 0 is empty) by hash, with linear probing.  Slots take 1 byte up to
** 256 of them, 2 bytes up to 65536, else 4.  A table of at most TL_LINEAR
** entries has no index: it is searched in order.
** Lua's short strings are interned, so a key string's address from Lua is
** a cheap first guess at its entry.  Arrays kaddr/kentry remember a few.  A hit
** is confirmed by comparing the key: a reused address just misses.
*/
#define TL_KCACHE 4
#define TL_LINEAR 8

typedef struct tl_tab {
  tl_entry *e;
  void *ix; /* the index: NULL while cap <= TL_LINEAR */
  const char *kaddr[TL_KCACHE];
  uint32_t kentry[TL_KCACHE]; /* index in e[] of the key at kaddr */
  uint32_t cap;   /* entries e[] has room for; unused ones are TL_EMPTY */
  uint32_t count; /* live entries */
  uint32_t used;  /* live + dead entries: e[0..used) */
  uint32_t ixmask; /* the slots in ix (a power of 2 above 1.5 cap) - 1 */
  uint32_t slot;  /* in the owner's slab */
  uint32_t depth; /* levels below the fields table (0), <= TL_MAXDEPTH */
  uint64_t version;        /* changes with every write: see tl_handle */
  struct tl_thread *owner; /* NULL for a shared local's defaults */
} tl_tab;

/*
** A home is the C side of one Lua state that holds Locals.  Every thread
** that stored values in the state holds a reference to it.  An exiting
** thread appends its id to `dead`, and the state purges those ids later.
** `dead` always has room for every registered thread (nreserved <= cap), so
** an exiting thread never allocates.
*/
typedef struct tl_home {
  pthread_mutex_t lock;
  atomic_int refs;     /* the state's reference + one per registered thread */
  atomic_int closed;   /* the state is gone: nobody purges any more */
  atomic_size_t ndead; /* ids in dead[]; read without the lock as a hint */
  size_t nreserved;    /* registered live threads + ids in dead[] */
  size_t cap;
  uint64_t *dead;
  struct tl_home *hprev, *hnext; /* every home: for fork */
} tl_home;

/*
** A thread's fields of one shared local, in the thread's map of them.
** A threadlocal.run swaps in its snapshot's fields and marks them with its
** own id.  The id comes from the thread's clock: never 0, never repeated.
** So a scope knows in O(1) which run's fields it changed.
*/
typedef struct tl_shslot {
  struct threadlocal_shared *sl; /* NULL: an empty slot */
  struct tl_tab *fields; /* NULL: none (the slot stays while run is set) */
  uint64_t run;          /* the run whose snapshot put fields here, or 0 */
} tl_shslot;

/*
** What the module knows of one OS thread; only that thread touches it.
** Its tables sit in the slab, so a Lua proxy names one by (slot,
** generation).  The proxy then finds a freed table gone without touching it.
*/
typedef struct tl_thread {
  uint64_t id;     /* never reused in this process */
  tl_home **homes; /* states this thread stored Local values in */
  size_t nhomes, caphomes;
  tl_shslot *shmap; /* its shared fields: open addressing by the name's hash */
  uint32_t shmask, shcount; /* slots - 1 (a power of 2 minus 1); used slots */
  /* The C API's last shared local and its fields here (maybe NULL).
  ** They stay until the fields change, so a C loop over one local skips the
  ** map. */
  const struct threadlocal_shared *lastsl;
  struct tl_tab *lastfields;
  uint64_t gennext; /* the next generation it hands out: see tl_mygen */
  tl_tab **slab;      /* the live tables, by slot */
  uint32_t *slabgen;  /* generation of each slot: bumped when it is freed */
  uint32_t *slabfree; /* free slots */
  uint32_t nslab, nslabfree, capslab;
  unsigned inits; /* Local inits running on this thread: no release meanwhile */
  uint64_t clock; /* the next table version: never repeats on this thread */
  struct tl_thread *prev, *next; /* every live record: for fork */
} tl_thread;

/* A shared local: found by name, never freed. */

struct threadlocal_shared {
  threadlocal_shared *next; /* in its registry bucket */
  uint32_t idx, hash;
  _Atomic(tl_tab *) defaults; /* set once, then read-only */
  size_t len;
  char name[];
};

#endif
