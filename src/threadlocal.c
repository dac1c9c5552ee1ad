/*
** threadlocal: data private to the calling OS thread, for Lua states and
** the C hosts that embed them.  See threadlocal.h for the exported names.
**
** Two kinds of local:
**
** - A Local (threadlocal.new) belongs to the state that created it and holds
**   any Lua value.  Its per-thread tables live in that state, keyed by
**   thread id.  A thread-exit hook can never touch a lua_State (another
**   thread may be running it), so an exiting thread only records its id with
**   each state it stored values in (its "homes"); the state drops those
**   values itself, from its own accesses and from a GC-cycle finalizer.
**
** - A shared local (threadlocal.shared) is process-wide and found by name.
**   Each thread keeps its fields in C tables reached through thread-local
**   storage, indexed by the shared local's number; only that thread ever
**   reads or writes them, so no access takes a lock.
*/
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE, RTLD_NOLOAD */

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "threadlocal.h"

/* ---------------------------------------------------------------------- */
/* Lua version compatibility                                              */
/* ---------------------------------------------------------------------- */

#if LUA_VERSION_NUM == 501

#define tl_rawlen(L, i) lua_objlen(L, i)
#define tl_absindex(L, i) \
  ((i) < 0 && (i) > LUA_REGISTRYINDEX ? lua_gettop(L) + (i) + 1 : (i))

static void tl_rawgetp(lua_State *L, int i, const void *p) {
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, i);
}

static void tl_rawsetp(lua_State *L, int i, const void *p) { /* pops */
  i = tl_absindex(L, i);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, i);
}

static void tl_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}

#else

#define tl_rawlen(L, i) lua_rawlen(L, i)
#define tl_absindex(L, i) lua_absindex(L, i)
#define tl_rawgetp(L, i, p) ((void)lua_rawgetp(L, i, p))
#define tl_rawsetp(L, i, p) lua_rawsetp(L, i, p)
#define tl_setfuncs(L, l, nup) luaL_setfuncs(L, l, nup)

#endif

/*
** Integers: 5.3 has them; before, a number is an integer if it has an
** exact integer value, so C hosts see 3 as an integer on every version.
*/
#if LUA_VERSION_NUM >= 503
#define tl_pushint(L, i) lua_pushinteger(L, (lua_Integer)(i))
#define tl_rawget64(L, t, k) ((void)lua_rawgeti(L, t, (lua_Integer)(k)))
#define tl_rawset64(L, t, k) lua_rawseti(L, t, (lua_Integer)(k))
static int tl_toint(lua_State *L, int i, int64_t *out) {
  if (!lua_isinteger(L, i)) return 0;
  *out = (int64_t)lua_tointeger(L, i);
  return 1;
}
#else
#define tl_pushint(L, i) lua_pushnumber(L, (lua_Number)(i))
static void tl_rawget64(lua_State *L, int t, uint64_t k) { /* t absolute */
  lua_pushnumber(L, (lua_Number)k);
  lua_rawget(L, t);
}
static void tl_rawset64(lua_State *L, int t, uint64_t k) { /* pops the value */
  lua_pushnumber(L, (lua_Number)k);
  lua_insert(L, -2);
  lua_rawset(L, t);
}
static int tl_toint(lua_State *L, int i, int64_t *out) {
  lua_Number n;
  if (lua_type(L, i) != LUA_TNUMBER) return 0;
  n = lua_tonumber(L, i);
  if (n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
      (lua_Number)(int64_t)n == n) {
    *out = (int64_t)n;
    return 1;
  }
  return 0;
}
#endif

/*
** A userdata here carries up to three Lua values.  Lua 5.4 has numbered
** user values; older versions get one table that holds them.
*/
#if LUA_VERSION_NUM >= 504

#define tl_newud(L, sz, nuv) lua_newuserdatauv(L, sz, nuv)
#define tl_getuv(L, i, n) ((void)lua_getiuservalue(L, i, n))
#define tl_setuv(L, i, n) ((void)lua_setiuservalue(L, i, n))

#else

#if LUA_VERSION_NUM == 501
#define tl_getuvt(L, i) lua_getfenv(L, i)
#define tl_setuvt(L, i) lua_setfenv(L, i)
#else
#define tl_getuvt(L, i) lua_getuservalue(L, i)
#define tl_setuvt(L, i) lua_setuservalue(L, i)
#endif

static void *tl_newud(lua_State *L, size_t sz, int nuv) {
  void *p = lua_newuserdata(L, sz);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
    tl_setuvt(L, -2);
  }
  return p;
}

static void tl_getuv(lua_State *L, int i, int n) {
  tl_getuvt(L, i);
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
}

static void tl_setuv(lua_State *L, int i, int n) { /* pops the value */
  i = tl_absindex(L, i);
  tl_getuvt(L, i);
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
}

#endif

#if defined(__GNUC__)
#define tl_unlikely(x) __builtin_expect(!!(x), 0)
#define TL_HOT inline __attribute__((always_inline)) /* on every shared access */
#else
#define tl_unlikely(x) (x)
#define TL_HOT inline
#endif

/*
** Every access reads the thread-local id.  The initial-exec model makes
** that one load instead of a call to __tls_get_addr; glibc keeps static TLS
** room for dlopen()ed modules (we use 16 bytes).  -DTL_TLS_DYNAMIC opts out.
*/
#if defined(__GNUC__) && !defined(TL_TLS_DYNAMIC)
#define TL_TLS_MODEL __attribute__((tls_model("initial-exec")))
#else
#define TL_TLS_MODEL
#endif

/* ---------------------------------------------------------------------- */
/* Data structures                                                        */
/* ---------------------------------------------------------------------- */

/*
** A home is the C side of one Lua state that holds Locals.  Every thread
** that stored values in the state holds a reference to it; when the thread
** exits it appends its id to `dead`, and the state purges those ids later.
** `dead` always has room for every registered thread (nslots <= cap), so an
** exiting thread never allocates.
*/
typedef struct tl_home {
  pthread_mutex_t lock;
  atomic_int refs;     /* the state's reference + one per registered thread */
  atomic_int closed;   /* the state is gone: nobody purges any more */
  atomic_size_t ndead; /* ids in dead[]; read without the lock as a hint */
  size_t nslots;       /* registered live threads + ids in dead[] */
  size_t cap;
  uint64_t *dead;
  struct tl_home *hprev, *hnext; /* every home: for fork */
} tl_home;

/* Shared values: plain data, copied in, owned by one thread. */
enum { TL_TNIL, TL_TBOOL, TL_TINT, TL_TFLOAT, TL_TSTR, TL_TPTR, TL_TTAB };

struct tl_tab;

typedef struct tl_val {
  unsigned char type;
  union {
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
  } u;
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

typedef struct tl_entry {
  tl_val key, val; /* key.type is a tl_key type */
  uint32_t hash;
  unsigned char state;
} tl_entry;

struct tl_thread;

/*
** An open-addressing hash table of shared values.  Lua's short strings are
** interned, so the address of a key string seen from Lua is a cheap first
** guess at its entry: kaddr/kslot remember a few, and a hit is confirmed by
** comparing the key (a reused address with another content just misses).
*/
#define TL_KCACHE 4

typedef struct tl_tab {
  tl_entry *e;
  const char *kaddr[TL_KCACHE];
  uint32_t kslot[TL_KCACHE];
  uint32_t cap;   /* 0 or a power of 2 */
  uint32_t count; /* live entries */
  uint32_t used;  /* live + dead entries, <= cap / 2: short probes */
  uint32_t handle;
  uint64_t version;        /* changes with every write: see tl_shared */
  struct tl_thread *owner; /* NULL for a shared local's defaults */
} tl_tab;

/*
** What the module knows of one OS thread; only that thread touches it.
** Its tables sit in a slab so that a Lua proxy can name one by (index,
** generation) and find out, without touching freed memory, that it is gone.
*/
typedef struct tl_thread {
  uint64_t id;     /* never reused in this process */
  tl_home **homes; /* states this thread stored Local values in */
  size_t nhomes, caphomes;
  tl_tab **slots;  /* by shared local index: this thread's fields, or NULL */
  uint32_t nslots;
  tl_tab **tabs;   /* the slab */
  uint32_t *gens;  /* generation of each slab entry */
  uint32_t *freeidx;
  uint32_t ntabs, nfree, captabs;
  uint64_t clock; /* the next table version: never repeats on this thread */
  struct tl_thread *prev, *next; /* every live record: for fork */
} tl_thread;

/* A shared local: found by name, never freed. */
struct threadlocal_shared {
  struct threadlocal_shared *next; /* in its registry bucket */
  uint32_t idx, hash;
  _Atomic(tl_tab *) defaults; /* set once, then read-only */
  size_t len;
  char name[];
};

typedef threadlocal_shared tl_desc;

/* The per-state anchor: upvalue 1 of every function of the module. */
typedef struct tl_state {
  tl_home *home;    /* NULL once the state is closing */
  int nosentinel;   /* making the next GC sentinel ran out of memory */
} tl_state;

enum { TL_ST_BYTHREAD = 1, /* id -> weak set of Locals holding fields for id */
       TL_ST_SENTINEL_MT,  /* metatable of the per-cycle GC sentinel */
       TL_ST_SHARED,       /* name -> shared local userdata */
       TL_ST_PROXIES,      /* weak: slab index + 1 -> a proxy */
       TL_ST_NUV = TL_ST_PROXIES };

/*
** A Local.  Its user values: the map thread id -> fields table, the init
** record {f, args..., n = #args+1}, and its own __index and __newindex
** closures.  Each of those keeps one thread's fields table as its upvalue
** TL_UP_FIELDS, so that a hit costs a rawget on a fixed table, as the floor.
*/
typedef struct tl_local {
  uint64_t get_id, set_id; /* whose fields __index / __newindex hold */
} tl_local;

enum { TL_UV_MAP = 1, TL_UV_INIT, TL_UV_GET, TL_UV_SET, TL_LOCAL_NUV = TL_UV_SET };

#define TL_UP_FIELDS lua_upvalueindex(3)

#define TL_NOCACHE UINT64_MAX /* matches no thread, not even "no record yet" */

/*
** A shared local in one state.  It remembers the table field last read
** through it, whose proxy is its user value: a loop reading sh.t.k skips
** the lookup of "t".  That is right while the same thread's same fields
** table has the same version (versions never repeat on a thread) and the
** key is the same.
*/
typedef struct tl_shared {
  tl_desc *d;
  uint64_t lowner, lversion;
  const tl_tab *ltab;
  const char *lkey;
  const tl_entry *lentry;
} tl_shared;

/* A proxy of a shared table read by thread `owner`. */
typedef struct tl_proxy {
  uint64_t owner;
  uint32_t index, gen;
} tl_proxy;

#define TL_STATE_MT "threadlocal.state"
#define TL_MAXDEPTH 100 /* nesting of shared tables */

static pthread_once_t tl_once = PTHREAD_ONCE_INIT;
static int tl_once_err;
static pthread_key_t tl_exitkey; /* its destructor is tl_thread_exit */
static atomic_uint_fast64_t tl_nextid = 1;
static const char tl_statekey = 0; /* registry key of the tl_state */

/* Every live thread record and home, so that fork can take every lock and
** a forked child can retire the other threads. */
static pthread_mutex_t tl_list_lock = PTHREAD_MUTEX_INITIALIZER;
static tl_thread *tl_list;
static tl_home *tl_homes;

/* The registry of shared locals, by name. */
static pthread_mutex_t tl_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static tl_desc **tl_reg;
static uint32_t tl_reg_cap, tl_reg_count;

static _Thread_local tl_thread *tl_me TL_TLS_MODEL;
static _Thread_local uint64_t tl_myid TL_TLS_MODEL; /* tl_me->id, or 0 */

/* ---------------------------------------------------------------------- */
/* Memory: every allocation of the module goes through one hook            */
/* ---------------------------------------------------------------------- */

static void *tl_defalloc(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, size);
}

static threadlocal_alloc tl_allocf = tl_defalloc;
static void *tl_allocud;

static void *tl_realloc(void *p, size_t size) { return tl_allocf(tl_allocud, p, size); }
static void *tl_malloc(size_t size) { return tl_allocf(tl_allocud, NULL, size); }

static void *tl_calloc(size_t n, size_t size) {
  void *p = size != 0 && n > SIZE_MAX / size ? NULL : tl_malloc(n * size);
  if (p != NULL) memset(p, 0, n * size);
  return p;
}

static void tl_free(void *p) {
  if (p != NULL) tl_allocf(tl_allocud, p, 0);
}

THREADLOCAL_API void threadlocal_set_allocator(threadlocal_alloc f, void *ud) {
  tl_allocf = f != NULL ? f : tl_defalloc;
  tl_allocud = f != NULL ? ud : NULL;
}

/* ---------------------------------------------------------------------- */
/* Shared tables (plain C: no Lua, no locks)                              */
/* ---------------------------------------------------------------------- */

/* Eight bytes at a time: keys are hashed on every shared access. */
static uint32_t tl_hash_bytes(const char *s, size_t len) {
  uint64_t h = 0x9e3779b97f4a7c15u ^ (uint64_t)len, w;
  while (len >= 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdu;
    h ^= h >> 32;
    s += 8;
    len -= 8;
  }
  for (w = 0; len > 0; len--) w = (w << 8) | (unsigned char)s[len - 1];
  h = (h ^ w) * 0xc4ceb9fe1a85ec53u;
  return (uint32_t)(h ^ (h >> 32));
}

static uint32_t tl_hash_int(uint64_t x) {
  x *= 0x9e3779b97f4a7c15u;
  return (uint32_t)(x >> 32);
}

static void tl_key_str(tl_key *k, const char *s, size_t len) {
  k->type = TL_TSTR;
  k->u.str.s = s;
  k->u.str.len = len;
  k->hash = tl_hash_bytes(s, len);
}

static void tl_key_int(tl_key *k, int64_t i) {
  k->type = TL_TINT;
  k->u.i = i;
  k->hash = tl_hash_int((uint64_t)i);
}

/* A float key: one with an integer value is that integer, as in Lua. */
static void tl_key_float(tl_key *k, double f) {
  if (f >= -9223372036854775808.0 && f < 9223372036854775808.0 && (double)(int64_t)f == f) {
    tl_key_int(k, (int64_t)f);
  } else {
    uint64_t bits;
    memcpy(&bits, &f, sizeof bits);
    k->type = TL_TFLOAT;
    k->u.f = f;
    k->hash = tl_hash_int(bits ^ 0x5555u);
  }
}

static void tl_key_bool(tl_key *k, int b) {
  k->type = TL_TBOOL;
  k->u.b = b != 0;
  k->hash = b ? 0x9e3779b9u : 0x7f4a7c15u;
}

static void tl_key_of(tl_key *k, const tl_val *v) { /* v is an entry's key */
  switch (v->type) {
    case TL_TSTR: tl_key_str(k, v->u.str.s, v->u.str.len); break;
    case TL_TINT: tl_key_int(k, v->u.i); break;
    case TL_TFLOAT: tl_key_float(k, v->u.f); break;
    default: tl_key_bool(k, v->u.b); break;
  }
}

/* a[0..len) == b[0..len); inline for the short keys of every access. */
static TL_HOT int tl_memeq(const char *a, const char *b, size_t len) {
  uint64_t x, y;
  if (len > 16) return memcmp(a, b, len) == 0;
  if (len >= 8) {
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    if (x != y) return 0;
    memcpy(&x, a + len - 8, 8);
    memcpy(&y, b + len - 8, 8);
    return x == y;
  }
  for (; len > 0; len--)
    if (a[len - 1] != b[len - 1]) return 0;
  return 1;
}

static int tl_key_eq(const tl_entry *e, const tl_key *k) {
  if (e->hash != k->hash || e->key.type != k->type) return 0;
  switch (k->type) {
    case TL_TSTR:
      return e->key.u.str.len == k->u.str.len &&
             tl_memeq(e->key.u.str.s, k->u.str.s, k->u.str.len);
    case TL_TINT: return e->key.u.i == k->u.i;
    case TL_TFLOAT: return e->key.u.f == k->u.f;
    default: return e->key.u.b == k->u.b;
  }
}

static tl_entry *tl_tab_find(const tl_tab *t, const tl_key *k) {
  uint32_t mask, i;
  if (t->cap == 0) return NULL;
  mask = t->cap - 1;
  for (i = k->hash & mask;; i = (i + 1) & mask) {
    tl_entry *e = &t->e[i];
    if (e->state == TL_EMPTY) return NULL;
    if (e->hash == k->hash && e->state == TL_LIVE && tl_key_eq(e, k)) return e;
  }
}

/* Finds the key s[0..len), a string from Lua, through the address cache. */
static TL_HOT tl_entry *tl_tab_findstr(tl_tab *t, const char *s, size_t len) {
  uint32_t c = (uint32_t)((uintptr_t)s >> 4) & (TL_KCACHE - 1);
  tl_entry *e;
  tl_key k;
  if (t->kaddr[c] == s) {
    e = &t->e[t->kslot[c]];
    if (e->state == TL_LIVE && e->key.type == TL_TSTR && e->key.u.str.len == len &&
        tl_memeq(e->key.u.str.s, s, len))
      return e;
  }
  tl_key_str(&k, s, len);
  if ((e = tl_tab_find(t, &k)) != NULL) {
    t->kaddr[c] = s;
    t->kslot[c] = (uint32_t)(e - t->e);
  }
  return e;
}

static int tl_slab_add(tl_thread *t, tl_tab *tab);
static void tl_slab_remove(tl_thread *t, tl_tab *tab);

/* A new empty table owned by t (NULL: not in any slab). */
static tl_tab *tl_tab_new(tl_thread *owner) {
  tl_tab *tab = (tl_tab *)tl_calloc(1, sizeof *tab);
  if (tab == NULL) return NULL;
  tab->owner = owner;
  if (owner != NULL) tab->version = owner->clock++;
  if (owner != NULL && tl_slab_add(owner, tab) != 0) {
    tl_free(tab);
    return NULL;
  }
  return tab;
}

static void tl_tab_free(tl_tab *tab);

/* Frees what v owns; runs a pointer's destructor. */
static void tl_val_free(tl_val *v) {
  switch (v->type) {
    case TL_TSTR: tl_free(v->u.str.s); break;
    case TL_TPTR:
      if (v->u.ptr.dtor != NULL) v->u.ptr.dtor(v->u.ptr.p);
      break;
    case TL_TTAB: tl_tab_free(v->u.tab); break;
  }
  v->type = TL_TNIL;
}

static void tl_tab_free(tl_tab *tab) {
  uint32_t i;
  if (tab->owner != NULL) tl_slab_remove(tab->owner, tab);
  for (i = 0; i < tab->cap; i++) {
    tl_entry *e = &tab->e[i];
    if (e->state == TL_LIVE) {
      tl_val_free(&e->key);
      tl_val_free(&e->val);
    }
  }
  tl_free(tab->e);
  tl_free(tab);
}

/* Makes room for one more entry.  Returns 0, or -1 when out of memory. */
static int tl_tab_reserve(tl_tab *t) {
  uint32_t cap = t->cap ? t->cap : 4, i;
  tl_entry *ne;
  if ((t->used + 1) * 2 <= t->cap) return 0;
  while (cap < 2 * (t->count + 1)) cap *= 2; /* else: the same size, minus tombstones */
  ne = (tl_entry *)tl_calloc(cap, sizeof *ne);
  if (ne == NULL) return -1;
  for (i = 0; i < t->cap; i++) {
    tl_entry *e = &t->e[i];
    if (e->state == TL_LIVE) {
      uint32_t j = e->hash & (cap - 1);
      while (ne[j].state != TL_EMPTY) j = (j + 1) & (cap - 1);
      ne[j] = *e;
    }
  }
  tl_free(t->e);
  t->e = ne;
  t->cap = cap;
  t->used = t->count;
  memset(t->kaddr, 0, sizeof t->kaddr);
  return 0;
}

/*
** t[k] = *v, moving v in (nil deletes).  The replaced value is moved to
** *old for the caller to free once the table is consistent, since a
** destructor may call back in.  Returns 0, or -1 when out of memory (then
** nothing changed and v still belongs to the caller).
*/
static int tl_tab_put(tl_tab *t, const tl_key *k, tl_val *v, tl_val *old) {
  tl_entry *e = tl_tab_find(t, k);
  old->type = TL_TNIL;
  if (t->owner != NULL) t->version = t->owner->clock++;
  if (e != NULL) {
    *old = e->val;
    if (v->type == TL_TNIL) { /* delete */
      tl_val_free(&e->key);
      e->state = TL_DEAD;
      t->count--;
    } else
      e->val = *v;
    return 0;
  }
  if (v->type == TL_TNIL) return 0;
  if (tl_tab_reserve(t) != 0) return -1;
  {
    uint32_t mask = t->cap - 1, i = k->hash & mask;
    tl_val key;
    key.type = k->type;
    switch (k->type) {
      case TL_TSTR:
        if ((key.u.str.s = (char *)tl_malloc(k->u.str.len + 1)) == NULL) return -1;
        memcpy(key.u.str.s, k->u.str.s, k->u.str.len);
        key.u.str.s[k->u.str.len] = '\0';
        key.u.str.len = k->u.str.len;
        break;
      case TL_TINT: key.u.i = k->u.i; break;
      case TL_TFLOAT: key.u.f = k->u.f; break;
      default: key.u.b = k->u.b; break;
    }
    while (t->e[i].state == TL_LIVE) i = (i + 1) & mask;
    e = &t->e[i];
    if (e->state == TL_EMPTY) t->used++;
    e->state = TL_LIVE;
    e->key = key;
    e->val = *v;
    e->hash = k->hash;
    t->count++;
  }
  return 0;
}

static int tl_val_clone(const tl_val *src, tl_val *dst, tl_thread *owner);

/* A deep copy owned by `owner`; NULL when out of memory. */
static tl_tab *tl_tab_clone(const tl_tab *src, tl_thread *owner) {
  tl_tab *t = tl_tab_new(owner);
  uint32_t i;
  if (t == NULL) return NULL;
  for (i = 0; i < src->cap; i++) {
    const tl_entry *e = &src->e[i];
    tl_key k;
    tl_val v, old;
    if (e->state != TL_LIVE) continue;
    tl_key_of(&k, &e->key);
    if (tl_val_clone(&e->val, &v, owner) != 0) goto fail;
    if (tl_tab_put(t, &k, &v, &old) != 0) {
      tl_val_free(&v);
      goto fail;
    }
  }
  return t;
fail:
  tl_tab_free(t);
  return NULL;
}

/* A copy never takes a pointer's destructor: only the original runs it. */
static int tl_val_clone(const tl_val *src, tl_val *dst, tl_thread *owner) {
  *dst = *src;
  switch (src->type) {
    case TL_TSTR:
      if ((dst->u.str.s = (char *)tl_malloc(src->u.str.len + 1)) == NULL) return -1;
      memcpy(dst->u.str.s, src->u.str.s, src->u.str.len + 1);
      break;
    case TL_TPTR: dst->u.ptr.dtor = NULL; break;
    case TL_TTAB:
      if ((dst->u.tab = tl_tab_clone(src->u.tab, owner)) == NULL) return -1;
      break;
  }
  return 0;
}

static int tl_tab_equal(const tl_tab *a, const tl_tab *b);

static int tl_val_equal(const tl_val *a, const tl_val *b) {
  if (a->type != b->type) return 0;
  switch (a->type) {
    case TL_TNIL: return 1;
    case TL_TBOOL: return a->u.b == b->u.b;
    case TL_TINT: return a->u.i == b->u.i;
    case TL_TFLOAT: return a->u.f == b->u.f;
    case TL_TSTR:
      return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case TL_TPTR: return a->u.ptr.p == b->u.ptr.p;
    default: return tl_tab_equal(a->u.tab, b->u.tab);
  }
}

static int tl_tab_equal(const tl_tab *a, const tl_tab *b) {
  uint32_t i;
  if (a->count != b->count) return 0;
  for (i = 0; i < a->cap; i++) {
    const tl_entry *e = &a->e[i], *f;
    tl_key k;
    if (e->state != TL_LIVE) continue;
    tl_key_of(&k, &e->key);
    if ((f = tl_tab_find(b, &k)) == NULL || !tl_val_equal(&e->val, &f->val)) return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Threads, homes and slabs (no Lua here: this runs at thread exit too)   */
/* ---------------------------------------------------------------------- */

static int tl_slab_add(tl_thread *t, tl_tab *tab) {
  uint32_t i;
  if (t->nfree > 0)
    i = t->freeidx[--t->nfree];
  else {
    if (t->ntabs == t->captabs) {
      uint32_t cap = t->captabs ? 2 * t->captabs : 16;
      tl_tab **tabs = (tl_tab **)tl_realloc(t->tabs, cap * sizeof *tabs);
      uint32_t *gens, *freeidx;
      if (tabs == NULL) return -1;
      t->tabs = tabs;
      if ((gens = (uint32_t *)tl_realloc(t->gens, cap * sizeof *gens)) == NULL) return -1;
      t->gens = gens;
      if ((freeidx = (uint32_t *)tl_realloc(t->freeidx, cap * sizeof *freeidx)) == NULL) return -1;
      t->freeidx = freeidx;
      memset(gens + t->captabs, 0, (cap - t->captabs) * sizeof *gens);
      t->captabs = cap;
    }
    i = t->ntabs++;
  }
  t->tabs[i] = tab;
  tab->handle = i;
  return 0;
}

static void tl_slab_remove(tl_thread *t, tl_tab *tab) {
  t->tabs[tab->handle] = NULL;
  t->gens[tab->handle]++;
  t->freeidx[t->nfree++] = tab->handle;
}

static void tl_home_unref(tl_home *h) {
  if (atomic_fetch_sub(&h->refs, 1) == 1) {
    pthread_mutex_lock(&tl_list_lock);
    if (h->hprev != NULL) h->hprev->hnext = h->hnext; else tl_homes = h->hnext;
    if (h->hnext != NULL) h->hnext->hprev = h->hprev;
    pthread_mutex_unlock(&tl_list_lock);
    pthread_mutex_destroy(&h->lock);
    tl_free(h->dead);
    tl_free(h);
  }
}

/*
** Drops all of t's data, as at its exit: tells every home that t->id is
** dead, and frees t's shared fields (running destructors) after detaching
** them, so that a destructor that calls back in finds a consistent thread.
*/
static void tl_thread_retire(tl_thread *t) {
  tl_tab **slots = t->slots;
  uint32_t n = t->nslots, i;
  size_t j;
  for (j = 0; j < t->nhomes; j++) {
    tl_home *h = t->homes[j];
    pthread_mutex_lock(&h->lock);
    if (!atomic_load(&h->closed)) {
      size_t nd = atomic_load_explicit(&h->ndead, memory_order_relaxed);
      h->dead[nd] = t->id;
      atomic_store(&h->ndead, nd + 1);
    }
    pthread_mutex_unlock(&h->lock);
    tl_home_unref(h);
  }
  t->nhomes = 0;
  t->slots = NULL;
  t->nslots = 0;
  for (i = 0; i < n; i++)
    if (slots[i] != NULL) tl_tab_free(slots[i]);
  tl_free(slots);
}

static void tl_list_remove(tl_thread *t) { /* tl_list_lock held */
  if (t->prev != NULL) t->prev->next = t->next; else tl_list = t->next;
  if (t->next != NULL) t->next->prev = t->prev;
}

static void tl_thread_free(tl_thread *t) {
  tl_thread_retire(t);
  tl_free(t->homes);
  tl_free(t->tabs);
  tl_free(t->gens);
  tl_free(t->freeidx);
  tl_free(t);
}

static void tl_thread_exit(void *p) {
  tl_thread *t = (tl_thread *)p;
  /* A later destructor that touches the module gets a fresh record and id. */
  tl_me = NULL;
  tl_myid = 0;
  pthread_mutex_lock(&tl_list_lock);
  tl_list_remove(t);
  pthread_mutex_unlock(&tl_list_lock);
  tl_thread_free(t);
}

/*
** fork: the forking thread takes every lock first (list, registry, homes),
** so that the child sees no half-made change; in the child, where only the
** forking thread exists, every other thread's record is retired as if that
** thread had exited: its shared values are freed (destructors run) and its
** Local values become garbage of their states.
*/
static void tl_fork_prepare(void) {
  tl_home *h;
  pthread_mutex_lock(&tl_list_lock);
  pthread_mutex_lock(&tl_reg_lock);
  for (h = tl_homes; h != NULL; h = h->hnext) pthread_mutex_lock(&h->lock);
}

static void tl_fork_unlock(void) {
  tl_home *h;
  for (h = tl_homes; h != NULL; h = h->hnext) pthread_mutex_unlock(&h->lock);
  pthread_mutex_unlock(&tl_reg_lock);
  pthread_mutex_unlock(&tl_list_lock);
}

static void tl_fork_child(void) {
  tl_thread *t, *next, *others;
  tl_fork_unlock();
  pthread_mutex_lock(&tl_list_lock);
  others = tl_list;
  tl_list = tl_me;
  if (tl_me != NULL) tl_me->prev = tl_me->next = NULL;
  pthread_mutex_unlock(&tl_list_lock);
  for (t = others; t != NULL; t = next) {
    next = t->next;
    if (t != tl_me) tl_thread_free(t);
  }
}

static void tl_global_init(void) {
  Dl_info info;
  if (pthread_key_create(&tl_exitkey, tl_thread_exit) != 0 ||
      pthread_atfork(tl_fork_prepare, tl_fork_unlock, tl_fork_child) != 0) {
    tl_once_err = 1;
    return;
  }
  /* Lua's lua_close dlcloses C modules; tl_exitkey's destructor and the shared
  ** locals must outlive every state, so this object is never unloaded. */
  if (dladdr(&tl_nextid, &info) && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static int tl_init(void) {
  pthread_once(&tl_once, tl_global_init);
  return tl_once_err ? -1 : 0;
}

static tl_thread *tl_thread_get(void) { /* NULL when out of memory */
  tl_thread *t = tl_me;
  if (t == NULL) {
    t = (tl_thread *)tl_calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->id = atomic_fetch_add(&tl_nextid, 1);
    if (pthread_setspecific(tl_exitkey, t) != 0) {
      tl_free(t);
      return NULL;
    }
    pthread_mutex_lock(&tl_list_lock);
    t->next = tl_list;
    if (tl_list != NULL) tl_list->prev = t;
    tl_list = t;
    pthread_mutex_unlock(&tl_list_lock);
    tl_me = t;
    tl_myid = t->id;
  }
  return t;
}

static tl_home *tl_home_new(void) {
  tl_home *h = (tl_home *)tl_calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  if (pthread_mutex_init(&h->lock, NULL) != 0) {
    tl_free(h);
    return NULL;
  }
  atomic_init(&h->refs, 1);
  atomic_init(&h->closed, 0);
  atomic_init(&h->ndead, 0);
  pthread_mutex_lock(&tl_list_lock);
  h->hnext = tl_homes;
  if (tl_homes != NULL) tl_homes->hprev = h;
  tl_homes = h;
  pthread_mutex_unlock(&tl_list_lock);
  return h;
}

static void tl_home_close(tl_home *h) {
  pthread_mutex_lock(&h->lock);
  atomic_store(&h->closed, 1);
  pthread_mutex_unlock(&h->lock);
  tl_home_unref(h);
}

/* Make t report its exit to h.  Returns 0, or -1 when out of memory. */
static int tl_home_register(tl_home *h, tl_thread *t) {
  if (t->nhomes == t->caphomes) {
    size_t i, j = 0, cap;
    tl_home **nh;
    for (i = 0; i < t->nhomes; i++) { /* forget states that have closed */
      if (atomic_load(&t->homes[i]->closed))
        tl_home_unref(t->homes[i]);
      else
        t->homes[j++] = t->homes[i];
    }
    t->nhomes = j;
    if (j == t->caphomes) {
      cap = t->caphomes ? 2 * t->caphomes : 4;
      nh = (tl_home **)tl_realloc(t->homes, cap * sizeof *nh);
      if (nh == NULL) return -1;
      t->homes = nh;
      t->caphomes = cap;
    }
  }
  pthread_mutex_lock(&h->lock);
  if (h->nslots == h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 8;
    uint64_t *nd = (uint64_t *)tl_realloc(h->dead, cap * sizeof *nd);
    if (nd == NULL) {
      pthread_mutex_unlock(&h->lock);
      return -1;
    }
    h->dead = nd;
    h->cap = cap;
  }
  h->nslots++;
  pthread_mutex_unlock(&h->lock);
  atomic_fetch_add(&h->refs, 1);
  t->homes[t->nhomes++] = h;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Shared locals: the registry by name, and each thread's fields           */
/* ---------------------------------------------------------------------- */

/* Finds or creates; NULL when out of memory.  Takes the registry lock. */
static tl_desc *tl_desc_open(const char *name, size_t len) {
  uint32_t h = tl_hash_bytes(name, len);
  tl_desc *d;
  pthread_mutex_lock(&tl_reg_lock);
  if (tl_reg_cap > 0)
    for (d = tl_reg[h & (tl_reg_cap - 1)]; d != NULL; d = d->next)
      if (d->hash == h && d->len == len && memcmp(d->name, name, len) == 0) goto done;
  if (tl_reg_count == tl_reg_cap) { /* grow the buckets */
    uint32_t cap = tl_reg_cap ? 2 * tl_reg_cap : 16, i;
    tl_desc **nb = (tl_desc **)tl_calloc(cap, sizeof *nb);
    if (nb == NULL) {
      d = NULL;
      goto done;
    }
    for (i = 0; i < tl_reg_cap; i++)
      while ((d = tl_reg[i]) != NULL) {
        tl_reg[i] = d->next;
        d->next = nb[d->hash & (cap - 1)];
        nb[d->hash & (cap - 1)] = d;
      }
    tl_free(tl_reg);
    tl_reg = nb;
    tl_reg_cap = cap;
  }
  if ((d = (tl_desc *)tl_malloc(sizeof *d + len + 1)) != NULL) {
    d->idx = tl_reg_count++;
    d->hash = h;
    atomic_init(&d->defaults, NULL);
    d->len = len;
    memcpy(d->name, name, len);
    d->name[len] = '\0';
    d->next = tl_reg[h & (tl_reg_cap - 1)];
    tl_reg[h & (tl_reg_cap - 1)] = d;
  }
done:
  pthread_mutex_unlock(&tl_reg_lock);
  return d;
}

/*
** The calling thread's fields of d.  If it has none yet: with create, or
** when d has defaults, they are made (a copy of the defaults); otherwise
** NULL.  *err is set when out of memory.
*/
static tl_tab *tl_fields_slow(tl_thread *t, tl_desc *d, int create, int *err) {
  tl_tab *defaults = atomic_load_explicit(&d->defaults, memory_order_acquire);
  tl_tab *tab;
  *err = 0;
  if (!create && defaults == NULL) return NULL;
  if (d->idx >= t->nslots) {
    uint32_t n = t->nslots ? t->nslots : 4;
    tl_tab **ns;
    while (n <= d->idx) n *= 2;
    if ((ns = (tl_tab **)tl_realloc(t->slots, n * sizeof *ns)) == NULL) goto fail;
    memset(ns + t->nslots, 0, (n - t->nslots) * sizeof *ns);
    t->slots = ns;
    t->nslots = n;
  }
  tab = defaults ? tl_tab_clone(defaults, t) : tl_tab_new(t);
  if (tab == NULL) goto fail;
  t->slots[d->idx] = tab;
  return tab;
fail:
  *err = 1;
  return NULL;
}

static tl_tab *tl_fields_of(tl_thread *t, tl_desc *d, int create, int *err) {
  if (d->idx < t->nslots && t->slots[d->idx] != NULL) {
    *err = 0;
    return t->slots[d->idx];
  }
  return tl_fields_slow(t, d, create, err);
}

/* Deletes the calling thread's fields of d (destructors run). */
static void tl_fields_clear(tl_thread *t, const tl_desc *d) {
  if (d->idx < t->nslots && t->slots[d->idx] != NULL) {
    tl_tab *tab = t->slots[d->idx];
    t->slots[d->idx] = NULL;
    tl_tab_free(tab);
  }
}

/* ---------------------------------------------------------------------- */
/* C API                                                                  */
/* ---------------------------------------------------------------------- */

THREADLOCAL_API int threadlocal_shared_open(const char *name, size_t len,
                                            threadlocal_shared **out) {
  tl_desc *d;
  if (name == NULL || out == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (d = tl_desc_open(name, len)) == NULL) return THREADLOCAL_ERRMEM;
  *out = d;
  return THREADLOCAL_OK;
}

/* Sets key to v (moved in) for the calling thread. */
static int tl_capi_set(threadlocal_shared *sh, const char *key, tl_val *v) {
  tl_thread *t;
  tl_tab *tab;
  tl_key k;
  tl_val old;
  int err;
  if (sh == NULL || key == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
  tab = tl_fields_of(t, sh, v->type != TL_TNIL, &err);
  if (err) return THREADLOCAL_ERRMEM;
  if (tab == NULL) return THREADLOCAL_OK; /* deleting from nothing */
  tl_key_str(&k, key, strlen(key));
  if (tl_tab_put(tab, &k, v, &old) != 0) return THREADLOCAL_ERRMEM;
  tl_val_free(&old);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_set_nil(threadlocal_shared *sh, const char *key) {
  tl_val v;
  v.type = TL_TNIL;
  return tl_capi_set(sh, key, &v);
}

THREADLOCAL_API int threadlocal_delete(threadlocal_shared *sh, const char *key) {
  return threadlocal_set_nil(sh, key);
}

THREADLOCAL_API int threadlocal_set_boolean(threadlocal_shared *sh, const char *key,
                                            int value) {
  tl_val v;
  v.type = TL_TBOOL;
  v.u.b = value != 0;
  return tl_capi_set(sh, key, &v);
}

THREADLOCAL_API int threadlocal_set_integer(threadlocal_shared *sh, const char *key,
                                            int64_t value) {
  tl_val v;
  v.type = TL_TINT;
  v.u.i = value;
  return tl_capi_set(sh, key, &v);
}

THREADLOCAL_API int threadlocal_set_float(threadlocal_shared *sh, const char *key,
                                          double value) {
  tl_val v;
  v.type = TL_TFLOAT;
  v.u.f = value;
  return tl_capi_set(sh, key, &v);
}

THREADLOCAL_API int threadlocal_set_string(threadlocal_shared *sh, const char *key,
                                           const char *s, size_t len) {
  tl_val v;
  int rc;
  if (s == NULL && len > 0) return THREADLOCAL_ERRARG;
  v.type = TL_TSTR;
  if ((v.u.str.s = (char *)tl_malloc(len + 1)) == NULL) return THREADLOCAL_ERRMEM;
  if (len > 0) memcpy(v.u.str.s, s, len);
  v.u.str.s[len] = '\0';
  v.u.str.len = len;
  if ((rc = tl_capi_set(sh, key, &v)) != THREADLOCAL_OK) tl_free(v.u.str.s);
  return rc;
}

THREADLOCAL_API int threadlocal_set_pointer(threadlocal_shared *sh, const char *key,
                                            void *p, void (*destructor)(void *)) {
  tl_val v;
  v.type = TL_TPTR;
  v.u.ptr.p = p;
  v.u.ptr.dtor = destructor;
  return tl_capi_set(sh, key, &v); /* on failure the destructor is not run */
}

THREADLOCAL_API int threadlocal_get(threadlocal_shared *sh, const char *key,
                                    threadlocal_value *out) {
  tl_thread *t;
  tl_tab *tab;
  tl_entry *e = NULL;
  tl_key k;
  int err;
  if (sh == NULL || key == NULL || out == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
  tab = tl_fields_of(t, sh, 0, &err);
  if (err) return THREADLOCAL_ERRMEM;
  if (tab != NULL) {
    tl_key_str(&k, key, strlen(key));
    e = tl_tab_find(tab, &k);
  }
  memset(out, 0, sizeof *out);
  out->type = THREADLOCAL_NIL;
  if (e == NULL) return THREADLOCAL_OK;
  switch (e->val.type) {
    case TL_TBOOL: out->type = THREADLOCAL_BOOLEAN; out->u.boolean = e->val.u.b; break;
    case TL_TINT: out->type = THREADLOCAL_INTEGER; out->u.integer = e->val.u.i; break;
    case TL_TFLOAT: out->type = THREADLOCAL_FLOAT; out->u.number = e->val.u.f; break;
    case TL_TSTR:
      out->type = THREADLOCAL_STRING;
      out->u.string.ptr = e->val.u.str.s;
      out->u.string.len = e->val.u.str.len;
      break;
    case TL_TPTR: out->type = THREADLOCAL_POINTER; out->u.pointer = e->val.u.ptr.p; break;
    case TL_TTAB: out->type = THREADLOCAL_TABLE; break;
  }
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_clear(threadlocal_shared *sh) {
  if (sh == NULL) return THREADLOCAL_ERRARG;
  if (tl_me != NULL) tl_fields_clear(tl_me, sh);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_release(void) {
  tl_thread *t = tl_me;
  if (t != NULL) {
    tl_thread_retire(t);
    t->id = atomic_fetch_add(&tl_nextid, 1);
    tl_myid = t->id;
  }
  return THREADLOCAL_OK;
}

THREADLOCAL_API uint64_t threadlocal_id(void) {
  tl_thread *t;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return 0;
  return t->id;
}

/* ---------------------------------------------------------------------- */
/* Lua helpers                                                            */
/* ---------------------------------------------------------------------- */

static int tl_memerror(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  return lua_error(L);
}

/* Errors of our own carry no position prefix: they start "threadlocal:". */
static int tl_error(lua_State *L, const char *msg) {
  lua_pushstring(L, msg);
  return lua_error(L);
}

static tl_thread *tl_self(lua_State *L) {
  tl_thread *t = tl_thread_get();
  if (t == NULL) tl_memerror(L);
  return t;
}

/* Thread ids are table keys; lua_rawgeti takes only an int before 5.3. */
static void tl_getid(lua_State *L, int t, uint64_t id) {
  t = tl_absindex(L, t);
  lua_pushinteger(L, (lua_Integer)id);
  lua_rawget(L, t);
}

static void tl_setid(lua_State *L, int t, uint64_t id) { /* pops the value */
  t = tl_absindex(L, t);
  lua_pushinteger(L, (lua_Integer)id);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

/* t[id] = nil, without inserting a dead key (which can allocate) */
static void tl_delid(lua_State *L, int t, uint64_t id) {
  t = tl_absindex(L, t);
  tl_getid(L, t, id);
  if (!lua_isnil(L, -1)) {
    lua_pushnil(L);
    tl_setid(L, t, id);
  }
  lua_pop(L, 1);
}

static void tl_copytable(lua_State *L, int src) { /* pushes a shallow copy */
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, src)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

static int tl_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

#define tl_state_at(L) ((tl_state *)lua_touserdata(L, lua_upvalueindex(1)))
/* Upvalues of the module's functions and of the shared and proxy
** metamethods: the tl_state, the proxy metatable, the proxy cache. */
#define TL_PROXY_MT lua_upvalueindex(2)
#define TL_PROXY_CACHE lua_upvalueindex(3)

/* ---------------------------------------------------------------------- */
/* Shared values in Lua: keys, conversion, proxies                        */
/* ---------------------------------------------------------------------- */

/* The shared key for stack slot i; 0 if the value cannot be one. */
static int tl_tokey(lua_State *L, int i, tl_key *k) {
  switch (lua_type(L, i)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      tl_key_str(k, s, len);
      return 1;
    }
    case LUA_TNUMBER: {
      int64_t n;
      if (tl_toint(L, i, &n))
        tl_key_int(k, n);
      else {
        lua_Number f = lua_tonumber(L, i);
        if (f != f) return 0;
        tl_key_float(k, (double)f);
      }
      return 1;
    }
    case LUA_TBOOLEAN: tl_key_bool(k, lua_toboolean(L, i)); return 1;
    default: return 0;
  }
}

static void tl_checkkey(lua_State *L, int i, tl_key *k) {
  if (tl_tokey(L, i, k)) return;
  if (lua_type(L, i) == LUA_TNUMBER)
    tl_error(L, "threadlocal: cannot use NaN as a field name");
  lua_pushfstring(L, "threadlocal: shared field names are strings, numbers or booleans, not %s",
                  luaL_typename(L, i));
  lua_error(L);
}

static void tl_pushkey(lua_State *L, const tl_val *k) {
  switch (k->type) {
    case TL_TSTR: lua_pushlstring(L, k->u.str.s, k->u.str.len); break;
    case TL_TINT: tl_pushint(L, k->u.i); break;
    case TL_TFLOAT: lua_pushnumber(L, (lua_Number)k->u.f); break;
    default: lua_pushboolean(L, k->u.b); break;
  }
}

/* Pushes a new proxy of tab, and remembers it in the cache (0: none). */
static void tl_newproxy(lua_State *L, tl_tab *tab, int mt, int cache) {
  tl_proxy *p = (tl_proxy *)tl_newud(L, sizeof *p, 0);
  p->owner = tab->owner->id;
  p->index = tab->handle;
  p->gen = tab->owner->gens[tab->handle];
  lua_pushvalue(L, mt);
  lua_setmetatable(L, -2);
  if (cache != 0) {
    lua_pushvalue(L, -1);
    tl_rawset64(L, cache, tab->handle + 1u);
  }
}

/*
** Pushes a proxy of tab (owned by the calling thread); mt is the proxy
** metatable.  With a cache (0: none), a table read again in a loop gets
** the same proxy back instead of a new userdata each time.  The cache is
** keyed by slab index (dense: its array part), and a proxy found there is
** checked, since another thread's or an older table may have had the slot.
** mt and cache are absolute or pseudo-indices.
*/
static TL_HOT void tl_pushproxy(lua_State *L, tl_tab *tab, int mt, int cache) {
  uint32_t gen = tab->owner->gens[tab->handle];
  if (cache != 0) {
    const tl_proxy *p;
    tl_rawget64(L, cache, tab->handle + 1u);
    p = (const tl_proxy *)lua_touserdata(L, -1);
    if (p != NULL && p->owner == tab->owner->id && p->index == tab->handle && p->gen == gen)
      return;
    lua_pop(L, 1);
  }
  tl_newproxy(L, tab, mt, cache);
}

static TL_HOT void tl_pushval(lua_State *L, const tl_val *v, int mt, int cache) {
  switch (v->type) {
    case TL_TNIL: lua_pushnil(L); break;
    case TL_TBOOL: lua_pushboolean(L, v->u.b); break;
    case TL_TINT: tl_pushint(L, v->u.i); break;
    case TL_TFLOAT: lua_pushnumber(L, (lua_Number)v->u.f); break;
    case TL_TSTR: lua_pushlstring(L, v->u.str.s, v->u.str.len); break;
    case TL_TPTR: lua_pushlightuserdata(L, v->u.ptr.p); break;
    default: tl_pushproxy(L, v->u.tab, mt, cache); break;
  }
}

/* Pushes a deep copy of tab as plain Lua tables. */
static void tl_pushcopy(lua_State *L, const tl_tab *tab) {
  uint32_t i;
  luaL_checkstack(L, 3, "threadlocal: tables nested too deep");
  lua_createtable(L, 0, (int)tab->count);
  for (i = 0; i < tab->cap; i++) {
    const tl_entry *e = &tab->e[i];
    if (e->state != TL_LIVE) continue;
    tl_pushkey(L, &e->key);
    if (e->val.type == TL_TTAB)
      tl_pushcopy(L, e->val.u.tab);
    else
      tl_pushval(L, &e->val, 0, 0);
    lua_rawset(L, -3);
  }
}

static tl_tab *tl_proxy_fail(lua_State *L, const tl_proxy *p) {
  tl_thread *t = tl_me;
  if (t == NULL || p->owner != t->id)
    tl_error(L, "threadlocal: table proxy used on another thread than the one that read it");
  tl_error(L, "threadlocal: table proxy is stale: its table was replaced, deleted or cleared");
  return NULL;
}

/* The table a proxy at stack slot i stands for; raises if it is gone. */
static TL_HOT tl_tab *tl_proxy_tab(lua_State *L, int i) {
  const tl_proxy *p = (const tl_proxy *)lua_touserdata(L, i);
  tl_thread *t = tl_me;
  if (t != NULL && p->owner == t->id && p->index < t->ntabs && t->gens[p->index] == p->gen)
    return t->tabs[p->index];
  return tl_proxy_fail(L, p);
}

/*
** Lua value -> shared value, never raising, so that a failure can free
** what was built and leave everything as it was.  Nested tables are copied
** raw (metatables are not followed); a proxy's table is copied.
*/
typedef struct tl_conv {
  lua_State *L;
  tl_thread *owner; /* of the tables made; NULL for defaults */
  int mt;           /* proxy metatable, absolute index */
  int depth, ntables;
  int keys[TL_MAXDEPTH + 1];       /* stack slots of the keys on the path */
  const void *tables[TL_MAXDEPTH]; /* the tables on the path, for cycles */
  int nomem;
  char msg[256];
} tl_conv;

enum { TL_CONV_OK, TL_CONV_FAIL };

/* Sets c->msg to "threadlocal: <what>[ in field '<path>']". */
static int tl_conv_fail(tl_conv *c, const char *what) {
  size_t n = (size_t)snprintf(c->msg, sizeof c->msg, "threadlocal: %s", what);
  int i;
  if (c->depth > 0 && n < sizeof c->msg)
    n += (size_t)snprintf(c->msg + n, sizeof c->msg - n, " in field '");
  for (i = 0; i < c->depth && n < sizeof c->msg; i++) {
    int k = c->keys[i];
    if (lua_type(c->L, k) == LUA_TSTRING) {
      const char *s = lua_tostring(c->L, k);
      n += (size_t)snprintf(c->msg + n, sizeof c->msg - n, i ? ".%.40s" : "%.40s", s);
    } else if (lua_type(c->L, k) == LUA_TNUMBER)
      n += (size_t)snprintf(c->msg + n, sizeof c->msg - n, "[%.14g]", (double)lua_tonumber(c->L, k));
    else
      n += (size_t)snprintf(c->msg + n, sizeof c->msg - n, "[%s]", lua_toboolean(c->L, k) ? "true" : "false");
  }
  if (c->depth > 0 && n < sizeof c->msg) snprintf(c->msg + n, sizeof c->msg - n, "'");
  return TL_CONV_FAIL;
}

static int tl_conv_nomem(tl_conv *c) {
  c->nomem = 1;
  return TL_CONV_FAIL;
}

static int tl_conv_value(tl_conv *c, int i, tl_val *out);

static int tl_conv_table(tl_conv *c, int i, tl_tab **out) {
  lua_State *L = c->L;
  const void *self = lua_topointer(L, i);
  tl_tab *tab;
  int d;
  for (d = 0; d < c->ntables; d++)
    if (c->tables[d] == self) return tl_conv_fail(c, "cannot store a table that contains itself");
  if (c->ntables >= TL_MAXDEPTH || !lua_checkstack(L, 4))
    return tl_conv_fail(c, "cannot store tables nested this deep");
  if ((tab = tl_tab_new(c->owner)) == NULL) return tl_conv_nomem(c);
  c->tables[c->ntables++] = self;
  lua_pushnil(L);
  while (lua_next(L, i)) {
    tl_key k;
    tl_val v, old;
    int rc;
    if (!tl_tokey(L, -2, &k)) {
      char what[64];
      int kt = lua_type(L, -2);
      if (kt == LUA_TNUMBER)
        snprintf(what, sizeof what, "cannot use NaN as a key");
      else
        snprintf(what, sizeof what, "cannot use a %s as a key", lua_typename(L, kt));
      rc = tl_conv_fail(c, what);
    } else {
      c->keys[c->depth++] = lua_gettop(L) - 1;
      rc = tl_conv_value(c, lua_gettop(L), &v);
      c->depth--;
      if (rc == TL_CONV_OK && tl_tab_put(tab, &k, &v, &old) != 0) {
        tl_val_free(&v);
        rc = tl_conv_nomem(c);
      }
    }
    if (rc != TL_CONV_OK) {
      lua_pop(L, 2);
      tl_tab_free(tab);
      return rc;
    }
    lua_pop(L, 1);
  }
  c->ntables--;
  *out = tab;
  return TL_CONV_OK;
}

static int tl_conv_value(tl_conv *c, int i, tl_val *out) {
  lua_State *L = c->L;
  char what[64];
  out->type = TL_TNIL;
  switch (lua_type(L, i)) {
    case LUA_TNIL: return TL_CONV_OK;
    case LUA_TBOOLEAN:
      out->type = TL_TBOOL;
      out->u.b = lua_toboolean(L, i);
      return TL_CONV_OK;
    case LUA_TNUMBER:
      if (tl_toint(L, i, &out->u.i))
        out->type = TL_TINT;
      else {
        out->type = TL_TFLOAT;
        out->u.f = (double)lua_tonumber(L, i);
      }
      return TL_CONV_OK;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, i, &len);
      if ((out->u.str.s = (char *)tl_malloc(len + 1)) == NULL) return tl_conv_nomem(c);
      memcpy(out->u.str.s, s, len + 1);
      out->u.str.len = len;
      out->type = TL_TSTR;
      return TL_CONV_OK;
    }
    case LUA_TLIGHTUSERDATA:
      out->type = TL_TPTR;
      out->u.ptr.p = lua_touserdata(L, i);
      out->u.ptr.dtor = NULL;
      return TL_CONV_OK;
    case LUA_TTABLE:
      if (tl_conv_table(c, i, &out->u.tab) != TL_CONV_OK) return TL_CONV_FAIL;
      out->type = TL_TTAB;
      return TL_CONV_OK;
    case LUA_TUSERDATA:
      if (c->mt != 0 && lua_getmetatable(L, i)) {
        int isproxy = lua_rawequal(L, -1, c->mt);
        lua_pop(L, 1);
        if (isproxy) {
          tl_proxy *p = (tl_proxy *)lua_touserdata(L, i);
          tl_thread *t = tl_me;
          if (t == NULL || p->owner != t->id || p->index >= t->ntabs || t->gens[p->index] != p->gen)
            return tl_conv_fail(c, "cannot store a table proxy that is not valid on this thread");
          if ((out->u.tab = tl_tab_clone(t->tabs[p->index], c->owner)) == NULL)
            return tl_conv_nomem(c);
          out->type = TL_TTAB;
          return TL_CONV_OK;
        }
      }
      /* FALLTHROUGH */
    default: {
      int t = lua_type(L, i);
      snprintf(what, sizeof what, "cannot store a %s",
               t == LUA_TTHREAD ? "coroutine" : lua_typename(L, t));
      return tl_conv_fail(c, what);
    }
  }
}

/* Converts stack slot i into *out, or raises (having freed everything). */
static void tl_tovalue(lua_State *L, int i, int key, tl_thread *owner, int mt, tl_val *out) {
  tl_conv c;
  c.L = L;
  c.owner = owner;
  c.mt = mt ? tl_absindex(L, mt) : 0;
  c.depth = key ? 1 : 0;
  c.ntables = 0;
  c.keys[0] = key;
  c.nomem = 0;
  if (tl_conv_value(&c, tl_absindex(L, i), out) == TL_CONV_OK) return;
  if (c.nomem) tl_memerror(L);
  tl_error(L, c.msg);
}

/* Stores the value at slot 3 under the key at slot 2 of tab. */
static void tl_tab_assign_any(lua_State *L, tl_tab *tab) {
  tl_key k;
  tl_val v, old;
  tl_checkkey(L, 2, &k);
  switch (lua_type(L, 3)) { /* scalars need none of tl_tovalue's machinery */
    case LUA_TNIL: v.type = TL_TNIL; break;
    case LUA_TBOOLEAN:
      v.type = TL_TBOOL;
      v.u.b = lua_toboolean(L, 3);
      break;
    case LUA_TNUMBER:
      if (tl_toint(L, 3, &v.u.i))
        v.type = TL_TINT;
      else {
        v.type = TL_TFLOAT;
        v.u.f = (double)lua_tonumber(L, 3);
      }
      break;
    default: tl_tovalue(L, 3, 2, tab->owner, TL_PROXY_MT, &v); break;
  }
  if (tl_tab_put(tab, &k, &v, &old) != 0) {
    tl_val_free(&v);
    tl_memerror(L);
  }
  if (old.type >= TL_TSTR) tl_val_free(&old);
}

/* The same; first tries the common case: a number or boolean over an
** existing scalar field with a string key. */
static TL_HOT void tl_tab_assign(lua_State *L, tl_tab *tab) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    tl_entry *e = tl_tab_findstr(tab, s, len);
    if (e != NULL && e->val.type < TL_TSTR) {
      tab->version = tab->owner->clock++;
      if (tl_toint(L, 3, &e->val.u.i)) {
        e->val.type = TL_TINT;
        return;
      }
      switch (lua_type(L, 3)) {
        case LUA_TNUMBER:
          e->val.type = TL_TFLOAT;
          e->val.u.f = (double)lua_tonumber(L, 3);
          return;
        case LUA_TBOOLEAN:
          e->val.type = TL_TBOOL;
          e->val.u.b = lua_toboolean(L, 3);
          return;
      }
    }
  }
  tl_tab_assign_any(L, tab);
}

/* Pushes tab[key at slot 2]. */
static TL_HOT int tl_tab_index(lua_State *L, tl_tab *tab) {
  tl_key k;
  tl_entry *e = NULL;
  if (tab != NULL) {
    if (lua_type(L, 2) == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, 2, &len);
      e = tl_tab_findstr(tab, s, len);
    } else if (tl_tokey(L, 2, &k))
      e = tl_tab_find(tab, &k);
  }
  if (e != NULL)
    tl_pushval(L, &e->val, TL_PROXY_MT, TL_PROXY_CACHE);
  else
    lua_pushnil(L);
  return 1;
}

static lua_Integer tl_tab_len(const tl_tab *tab) { /* a border, as # finds one */
  tl_key k;
  int64_t i = 0, j = 1;
  if (tab == NULL) return 0;
  for (;;) { /* find i present, j absent */
    tl_key_int(&k, j);
    if (tl_tab_find(tab, &k) == NULL) break;
    i = j;
    if (j > INT64_MAX / 2) return (lua_Integer)j;
    j *= 2;
  }
  while (j - i > 1) {
    int64_t m = i + (j - i) / 2;
    tl_key_int(&k, m);
    if (tl_tab_find(tab, &k) == NULL) j = m; else i = m;
  }
  return (lua_Integer)i;
}

/* Upvalues: a proxy of the table, the next slot to look at. */
static int tl_iter(lua_State *L) {
  tl_tab *tab = tl_proxy_tab(L, lua_upvalueindex(1));
  uint32_t i = (uint32_t)lua_tointeger(L, lua_upvalueindex(2));
  for (; i < tab->cap; i++) {
    tl_entry *e = &tab->e[i];
    if (e->state != TL_LIVE) continue;
    lua_pushinteger(L, (lua_Integer)i + 1);
    lua_replace(L, lua_upvalueindex(2));
    tl_pushkey(L, &e->key);
    lua_getmetatable(L, lua_upvalueindex(1));
    tl_pushval(L, &e->val, lua_gettop(L), 0);
    lua_remove(L, -2);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)tab->cap);
  lua_replace(L, lua_upvalueindex(2));
  lua_pushnil(L);
  return 1;
}

static int tl_iter_empty(lua_State *L) {
  lua_pushnil(L);
  return 1;
}

/* Returns pairs' three values for tab (owned by the calling thread). */
static int tl_tab_pairs(lua_State *L, tl_tab *tab) {
  if (tab == NULL) {
    lua_pushcfunction(L, tl_iter_empty);
    return 1;
  }
  tl_pushproxy(L, tab, TL_PROXY_MT, 0);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, tl_iter, 2);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Shared locals and proxies in Lua                                       */
/* ---------------------------------------------------------------------- */

/* The calling thread's fields of the shared local at slot 1, when it has
** none yet: made (from the defaults) with create, or when there are defaults. */
static tl_tab *tl_shared_start(lua_State *L, int create) {
  tl_desc *d = ((tl_shared *)lua_touserdata(L, 1))->d;
  int err;
  tl_tab *tab = tl_fields_slow(tl_self(L), d, create, &err);
  if (err) tl_memerror(L);
  return tab;
}

static TL_HOT tl_tab *tl_shared_tab(lua_State *L, const tl_shared *sh, int create) {
  uint32_t idx = sh->d->idx;
  tl_thread *t = tl_me;
  tl_tab *tab;
  if (t != NULL && idx < t->nslots && (tab = t->slots[idx]) != NULL) return tab;
  return tl_shared_start(L, create);
}

static TL_HOT tl_tab *tl_shared_fields(lua_State *L, int create) {
  return tl_shared_tab(L, (const tl_shared *)lua_touserdata(L, 1), create);
}

/* Called only as metamethods, so argument 1 is a shared local. */
static int tl_shared_index(lua_State *L) {
  tl_shared *sh = (tl_shared *)lua_touserdata(L, 1);
  tl_tab *tab = tl_shared_tab(L, sh, 0);
  if (tab != NULL && lua_type(L, 2) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    tl_entry *e;
    if (s == sh->lkey && tab == sh->ltab && tab->version == sh->lversion &&
        tab->owner->id == sh->lowner && sh->lentry->key.u.str.len == len &&
        tl_memeq(sh->lentry->key.u.str.s, s, len)) {
      tl_getuv(L, 1, 1); /* the proxy of the table field read last */
      return 1;
    }
    if ((e = tl_tab_findstr(tab, s, len)) == NULL) {
      lua_pushnil(L);
      return 1;
    }
    tl_pushval(L, &e->val, TL_PROXY_MT, TL_PROXY_CACHE);
    if (e->val.type == TL_TTAB) {
      sh->lkey = s;
      sh->ltab = tab;
      sh->lversion = tab->version;
      sh->lowner = tab->owner->id;
      sh->lentry = e;
      lua_pushvalue(L, -1);
      tl_setuv(L, 1, 1);
    }
    return 1;
  }
  return tl_tab_index(L, tab);
}

static int tl_shared_newindex(lua_State *L) {
  tl_tab *tab = tl_shared_fields(L, 0);
  if (tab == NULL) { /* this thread's first write: deleting needs no fields */
    tl_key k;
    tl_checkkey(L, 2, &k);
    if (lua_isnil(L, 3)) return 0;
    tab = tl_shared_fields(L, 1);
  }
  tl_tab_assign(L, tab);
  return 0;
}

static int tl_shared_pairs(lua_State *L) {
  return tl_tab_pairs(L, tl_shared_fields(L, 0));
}

static int tl_shared_len(lua_State *L) {
  lua_pushinteger(L, tl_tab_len(tl_shared_fields(L, 0)));
  return 1;
}

static int tl_shared_tostring(lua_State *L) {
  tl_desc *d = ((tl_shared *)lua_touserdata(L, 1))->d;
  lua_pushliteral(L, THREADLOCAL_SHARED_MT " '");
  lua_pushlstring(L, d->name, d->len);
  lua_pushfstring(L, "': %p", lua_touserdata(L, 1));
  lua_concat(L, 3);
  return 1;
}

static int tl_proxy_index(lua_State *L) {
  return tl_tab_index(L, tl_proxy_tab(L, 1));
}

static int tl_proxy_newindex(lua_State *L) {
  tl_tab_assign(L, tl_proxy_tab(L, 1));
  return 0;
}

static int tl_proxy_pairs(lua_State *L) {
  return tl_tab_pairs(L, tl_proxy_tab(L, 1));
}

static int tl_proxy_len(lua_State *L) {
  lua_pushinteger(L, tl_tab_len(tl_proxy_tab(L, 1)));
  return 1;
}

static int tl_proxy_tostring(lua_State *L) {
  lua_pushfstring(L, THREADLOCAL_TABLE_MT ": %p", lua_touserdata(L, 1));
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Purging the Local fields of exited threads                             */
/* ---------------------------------------------------------------------- */

/* Drops the fields both closures hold, so that they keep nothing alive. */
static void tl_uncache(lua_State *L, int ud, tl_local *lo) {
  int uv;
  ud = tl_absindex(L, ud);
  lo->get_id = lo->set_id = TL_NOCACHE;
  for (uv = TL_UV_GET; uv <= TL_UV_SET; uv++) {
    tl_getuv(L, ud, uv);
    lua_pushnil(L);
    lua_setupvalue(L, -2, 3);
    lua_pop(L, 1);
  }
}

/* Drop every Local's fields of the exited thread `id`.  Allocates nothing,
** so it is safe inside a finalizer. */
static void tl_purge_id(lua_State *L, int bythread, uint64_t id) {
  tl_getid(L, bythread, id);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      tl_local *lo = (tl_local *)lua_touserdata(L, -2);
      tl_getuv(L, -2, TL_UV_MAP);
      tl_delid(L, -1, id);
      lua_pop(L, 2);
      if (lo->get_id == id || lo->set_id == id) tl_uncache(L, lua_gettop(L), lo);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    tl_setid(L, bythread, id);
  } else
    lua_pop(L, 1);
}

/* Upvalue 1 is the tl_state. */
static void tl_purge(lua_State *L) {
  tl_state *st = tl_state_at(L);
  tl_home *h = st->home;
  uint64_t ids[32];
  size_t n, i;
  if (h == NULL || atomic_load_explicit(&h->ndead, memory_order_relaxed) == 0)
    return;
  tl_getuv(L, lua_upvalueindex(1), TL_ST_BYTHREAD);
  do {
    size_t nd;
    pthread_mutex_lock(&h->lock);
    nd = atomic_load_explicit(&h->ndead, memory_order_relaxed);
    n = nd < 32 ? nd : 32;
    for (i = 0; i < n; i++) ids[i] = h->dead[nd - 1 - i];
    atomic_store(&h->ndead, nd - n);
    h->nslots -= n;
    pthread_mutex_unlock(&h->lock);
    for (i = 0; i < n; i++) tl_purge_id(L, lua_gettop(L), ids[i]);
  } while (n == 32);
  lua_pop(L, 1);
}

/*
** A finalizer runs once per GC cycle: the sentinel's __gc purges, then
** makes the next sentinel.  So a dead thread's values become garbage in
** one cycle and are collected in the next, even if no Local is touched.
*/
static void tl_sentinel_new(lua_State *L) {
  tl_newud(L, 1, 0);
  tl_getuv(L, lua_upvalueindex(1), TL_ST_SENTINEL_MT);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

static int tl_sentinel_gc(lua_State *L) {
  tl_state *st = tl_state_at(L);
  if (st->home == NULL) return 0; /* the state is closing */
  tl_purge(L);
  st->nosentinel = 1; /* until the next one exists: see tl_local_push */
  tl_sentinel_new(L);
  st->nosentinel = 0;
  return 0;
}

static int tl_state_gc(lua_State *L) {
  tl_state *st = (tl_state *)lua_touserdata(L, 1);
  if (st->home != NULL) {
    tl_home_close(st->home);
    st->home = NULL;
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Locals                                                                 */
/* ---------------------------------------------------------------------- */

/* Record that the Local at `ud` holds fields for t, so a purge finds them. */
static void tl_enroll(lua_State *L, int ud, tl_thread *t) {
  tl_state *st = tl_state_at(L);
  tl_getuv(L, lua_upvalueindex(1), TL_ST_BYTHREAD);
  tl_getid(L, -1, t->id);
  if (lua_isnil(L, -1)) { /* first Local of this state on this thread */
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    if (st->home != NULL && tl_home_register(st->home, t) != 0) tl_memerror(L);
    lua_pushvalue(L, -1);
    tl_setid(L, -3, t->id);
  }
  lua_pushvalue(L, ud);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 2);
}

/* Gives the calling thread t its fields table and runs init for it.
** Leaves the stack as it was. */
static void tl_local_start(lua_State *L, int ud, tl_thread *t) {
  int map, top = lua_gettop(L);
  tl_enroll(L, ud, t);
  tl_getuv(L, ud, TL_UV_MAP);
  map = lua_gettop(L);
  lua_newtable(L);
  tl_getid(L, map, t->id); /* a finalizer that ran during newtable may have */
  if (!lua_isnil(L, -1)) { /* started this thread already */
    lua_settop(L, top);
    return;
  }
  lua_pop(L, 1);
  tl_setid(L, map, t->id);
  tl_getuv(L, ud, TL_UV_INIT);
  if (lua_istable(L, -1)) {
    int i, n;
    lua_getfield(L, -1, "n");
    n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n + 1, "threadlocal: too many init arguments");
    lua_rawgeti(L, -1, 1);
    lua_pushvalue(L, ud);
    for (i = 2; i <= n; i++) lua_rawgeti(L, map + 1, i);
    if (lua_pcall(L, n, 0, 0) != 0) {
      /* The thread keeps no fields; the next access runs init again. */
      tl_delid(L, map, t->id);
      tl_uncache(L, ud, (tl_local *)lua_touserdata(L, ud));
      lua_error(L);
    }
  }
  lua_settop(L, top);
}

/* Pushes the calling thread's fields table of the Local at ud, starting
** the thread (init) if it has none.  Upvalue 1 is the tl_state. */
static void tl_local_push(lua_State *L, int ud) {
  tl_thread *t = tl_self(L);
  tl_state *st = tl_state_at(L);
  ud = tl_absindex(L, ud);
  tl_purge(L);
  if (tl_unlikely(st->nosentinel)) { /* a finalizer ran out of memory: mend */
    tl_sentinel_new(L);
    st->nosentinel = 0;
  }
  tl_getuv(L, ud, TL_UV_MAP);
  tl_getid(L, -1, t->id);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    tl_local_start(L, ud, t);
    tl_getid(L, -1, t->id);
    if (lua_isnil(L, -1)) { /* init cleared its own fields */
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      tl_setid(L, -3, t->id);
    }
  }
  lua_remove(L, -2);
}

/* The slow path of the closures: the calling thread is not the one whose
** fields they hold, so make TL_UP_FIELDS that thread's fields. */
static void tl_local_refresh(lua_State *L, uint64_t *cid) {
  tl_local_push(L, 1);
  lua_replace(L, TL_UP_FIELDS);
  *cid = tl_myid;
}

/* The hot path: called only as metamethods, so argument 1 is a Local. */
static int tl_local_index(lua_State *L) {
  tl_local *lo = (tl_local *)lua_touserdata(L, 1);
  if (tl_unlikely(lo->get_id != tl_myid)) tl_local_refresh(L, &lo->get_id);
  lua_rawget(L, TL_UP_FIELDS);
  return 1;
}

static int tl_local_newindex(lua_State *L) {
  tl_local *lo = (tl_local *)lua_touserdata(L, 1);
  switch (lua_type(L, 2)) {
    case LUA_TNIL:
      return tl_error(L, "threadlocal: cannot use nil as a field name");
    case LUA_TNUMBER: {
      lua_Number n = lua_tonumber(L, 2);
      if (n != n) return tl_error(L, "threadlocal: cannot use NaN as a field name");
      break;
    }
  }
  if (tl_unlikely(lo->set_id != tl_myid)) tl_local_refresh(L, &lo->set_id);
  lua_rawset(L, TL_UP_FIELDS);
  return 0;
}

static int tl_islocal(lua_State *L, int i) {
  int is = 0;
  if (lua_type(L, i) == LUA_TUSERDATA && lua_getmetatable(L, i)) {
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    is = lua_tocfunction(L, -1) == tl_local_index;
    lua_pop(L, 2);
  }
  return is;
}

static int tl_local_pairs(lua_State *L) {
  tl_local_push(L, 1);
  lua_pushcfunction(L, tl_next);
  lua_insert(L, -2);
  lua_pushnil(L);
  return 3;
}

static int tl_local_len(lua_State *L) {
  tl_local_push(L, 1);
  lua_pushinteger(L, (lua_Integer)tl_rawlen(L, -1));
  return 1;
}

static int tl_local_tostring(lua_State *L) {
  lua_pushfstring(L, THREADLOCAL_LOCAL_MT ": %p", lua_touserdata(L, 1));
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Module functions                                                       */
/* ---------------------------------------------------------------------- */

enum { TL_KLOCAL = 1, TL_KSHARED = 2, TL_KPROXY = 4 };

/* Which of the kinds in `kinds` the value at slot 1 is; raises otherwise. */
static int tl_checkkind(lua_State *L, int kinds, const char *expected) {
  if (tl_islocal(L, 1)) {
    if (kinds & TL_KLOCAL) return TL_KLOCAL;
  } else if (lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
    int k = 0;
    luaL_getmetatable(L, THREADLOCAL_SHARED_MT);
    if (lua_rawequal(L, -1, -2)) k = TL_KSHARED;
    lua_pop(L, 1);
    if (lua_rawequal(L, -1, TL_PROXY_MT)) k = TL_KPROXY;
    lua_pop(L, 1);
    if (k & kinds) return k;
  }
  return luaL_argerror(L, 1, lua_pushfstring(L, "%s expected, got %s", expected,
                                             luaL_typename(L, 1)));
}

/* Sets mt[name] to a new closure f over (state, proxy mt, no fields yet),
** and keeps it in user value uv of the Local at ud. */
static void tl_local_closure(lua_State *L, int ud, lua_CFunction f, const char *name, int uv) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushnil(L);
  lua_pushcclosure(L, f, 3);
  lua_pushvalue(L, -1);
  tl_setuv(L, ud, uv);
  lua_setfield(L, -2, name);
}

static int tl_new(lua_State *L) {
  int n = lua_gettop(L), i, ud = n + 1;
  tl_local *lo;
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  else if (n > 1)
    return tl_error(L, "threadlocal: init arguments given without an init function");
  lo = (tl_local *)tl_newud(L, sizeof *lo, TL_LOCAL_NUV);
  lo->get_id = lo->set_id = TL_NOCACHE;
  /* Its own metatable: the shared metamethods, and its own closures. */
  lua_createtable(L, 0, 8);
  luaL_getmetatable(L, THREADLOCAL_LOCAL_MT);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -5);
  }
  lua_pop(L, 1);
  tl_local_closure(L, ud, tl_local_index, "__index", TL_UV_GET);
  tl_local_closure(L, ud, tl_local_newindex, "__newindex", TL_UV_SET);
  lua_setmetatable(L, ud);
  lua_newtable(L);
  tl_setuv(L, ud, TL_UV_MAP);
  if (n > 0 && !lua_isnil(L, 1)) {
    lua_createtable(L, n, 1);
    for (i = 1; i <= n; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    tl_setuv(L, ud, TL_UV_INIT);
  }
  tl_local_push(L, ud); /* init runs in the creating thread now */
  lua_settop(L, ud);
  return 1;
}

static int tl_call(lua_State *L) { /* threadlocal(...) */
  lua_remove(L, 1);
  return tl_new(L);
}

static int tl_shared_new(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  tl_tab *defaults = NULL, *expected = NULL;
  tl_desc *d;
  tl_shared *sh;
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    tl_val v;
    tl_tovalue(L, 2, 0, NULL, TL_PROXY_MT, &v);
    defaults = v.u.tab;
  }
  if ((d = tl_desc_open(name, len)) == NULL) {
    if (defaults) tl_tab_free(defaults);
    return tl_memerror(L);
  }
  if (defaults != NULL &&
      !atomic_compare_exchange_strong(&d->defaults, &expected, defaults)) {
    int same = tl_tab_equal(expected, defaults);
    tl_tab_free(defaults);
    if (!same) {
      lua_pushliteral(L, "threadlocal: shared local '");
      lua_pushlstring(L, name, len);
      lua_pushliteral(L, "' already has other defaults");
      lua_concat(L, 3);
      return lua_error(L);
    }
  }
  tl_getuv(L, lua_upvalueindex(1), TL_ST_SHARED); /* one userdata per name */
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  sh = (tl_shared *)tl_newud(L, sizeof *sh, 1);
  memset(sh, 0, sizeof *sh);
  sh->d = d;
  luaL_getmetatable(L, THREADLOCAL_SHARED_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  return 1;
}

static int tl_clear(lua_State *L) {
  if (tl_checkkind(L, TL_KLOCAL | TL_KSHARED, "threadlocal.local or threadlocal.shared") ==
      TL_KSHARED) {
    if (tl_me != NULL) tl_fields_clear(tl_me, ((tl_shared *)lua_touserdata(L, 1))->d);
  } else {
    tl_local *lo = (tl_local *)lua_touserdata(L, 1);
    uint64_t id = tl_myid;
    if (id == 0) return 0; /* this thread never stored anything */
    tl_getuv(L, 1, TL_UV_MAP);
    tl_delid(L, -1, id);
    if (lo->get_id == id || lo->set_id == id) tl_uncache(L, 1, lo);
  }
  return 0;
}

static int tl_fields(lua_State *L) {
  const tl_tab *tab;
  switch (tl_checkkind(L, TL_KLOCAL | TL_KSHARED | TL_KPROXY,
                       "threadlocal.local, threadlocal.shared or threadlocal.table")) {
    case TL_KLOCAL:
      tl_local_push(L, 1);
      tl_copytable(L, lua_gettop(L));
      return 1;
    case TL_KSHARED: tab = tl_shared_fields(L, 0); break;
    default: tab = tl_proxy_tab(L, 1); break;
  }
  if (tab == NULL)
    lua_newtable(L);
  else
    tl_pushcopy(L, tab);
  return 1;
}

/* Upvalues: the Local, the array of ids to visit, the position in it. */
static int tl_threads_step(lua_State *L) {
  lua_Integer i = lua_tointeger(L, lua_upvalueindex(3));
  for (;;) {
    lua_rawgeti(L, lua_upvalueindex(2), (int)++i);
    if (lua_isnil(L, -1)) return 1;
    tl_getuv(L, lua_upvalueindex(1), TL_UV_MAP);
    lua_pushvalue(L, -2);
    lua_rawget(L, -2);
    if (lua_istable(L, -1)) {
      lua_pushinteger(L, i);
      lua_replace(L, lua_upvalueindex(3));
      tl_copytable(L, lua_gettop(L));
      lua_pushvalue(L, -4);
      lua_insert(L, -2);
      return 2;
    }
    lua_pop(L, 3);
  }
}

static int tl_threads(lua_State *L) {
  int n = 0;
  tl_checkkind(L, TL_KLOCAL, THREADLOCAL_LOCAL_MT);
  lua_settop(L, 1);
  tl_purge(L);
  tl_getuv(L, 1, TL_UV_MAP);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, 3, ++n);
  }
  lua_remove(L, 2);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, tl_threads_step, 3);
  return 1;
}

static int tl_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tl_self(L)->id);
  return 1;
}

/* Shared by every Local; each also gets its own __index and __newindex. */
static const luaL_Reg tl_local_meta[] = {
  {"__pairs", tl_local_pairs},
  {"__len", tl_local_len},
  {"__tostring", tl_local_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_shared_meta[] = {
  {"__index", tl_shared_index},
  {"__newindex", tl_shared_newindex},
  {"__pairs", tl_shared_pairs},
  {"__len", tl_shared_len},
  {"__tostring", tl_shared_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_proxy_meta[] = {
  {"__index", tl_proxy_index},
  {"__newindex", tl_proxy_newindex},
  {"__pairs", tl_proxy_pairs},
  {"__len", tl_proxy_len},
  {"__tostring", tl_proxy_tostring},
  {NULL, NULL}
};

static const luaL_Reg tl_funcs[] = {
  {"new", tl_new},
  {"local", tl_new},
  {"shared", tl_shared_new},
  {"clear", tl_clear},
  {"fields", tl_fields},
  {"threads", tl_threads},
  {"id", tl_id},
  {NULL, NULL}
};

/* Pushes this state's tl_state, creating it on the first require. */
static void tl_state_push(lua_State *L) {
  tl_state *st;
  tl_rawgetp(L, LUA_REGISTRYINDEX, &tl_statekey);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  st = (tl_state *)tl_newud(L, sizeof *st, TL_ST_NUV);
  st->home = NULL;
  st->nosentinel = 0;
  luaL_newmetatable(L, TL_STATE_MT);
  lua_pushcfunction(L, tl_state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if ((st->home = tl_home_new()) == NULL) tl_memerror(L);
  lua_newtable(L);
  tl_setuv(L, -2, TL_ST_BYTHREAD);
  lua_newtable(L);
  tl_setuv(L, -2, TL_ST_SHARED);
  lua_createtable(L, 0, 0);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  tl_setuv(L, -2, TL_ST_PROXIES);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, tl_sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  tl_setuv(L, -2, TL_ST_SENTINEL_MT);
  lua_pushvalue(L, -1);
  tl_rawsetp(L, LUA_REGISTRYINDEX, &tl_statekey);
}

static int tl_open_sentinel(lua_State *L) { /* upvalue 1: the tl_state */
  tl_sentinel_new(L);
  return 0;
}

/* Sets funcs into the table at the top, closed over the three values below
** it: the tl_state, the proxy metatable and the proxy cache. */
static void tl_setfuncs3(lua_State *L, const luaL_Reg *funcs) {
  lua_pushvalue(L, -4);
  lua_pushvalue(L, -4);
  lua_pushvalue(L, -4);
  tl_setfuncs(L, funcs, 3);
}

/* Fills and hides the metatable `name`, with the three values on the stack. */
static void tl_newmeta(lua_State *L, const char *name, const luaL_Reg *funcs) {
  luaL_newmetatable(L, name);
  tl_setfuncs3(L, funcs);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

THREADLOCAL_API int luaopen_threadlocal(lua_State *L) {
  if (tl_init() != 0) return tl_error(L, "threadlocal: cannot create the thread key");
  tl_state_push(L);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, tl_open_sentinel, 1);
  lua_call(L, 0, 0);
  luaL_newmetatable(L, THREADLOCAL_TABLE_MT);
  tl_getuv(L, -2, TL_ST_PROXIES); /* the three upvalues: state, proxy mt, cache */

  tl_newmeta(L, THREADLOCAL_TABLE_MT, tl_proxy_meta);
  tl_newmeta(L, THREADLOCAL_LOCAL_MT, tl_local_meta);
  tl_newmeta(L, THREADLOCAL_SHARED_MT, tl_shared_meta);

  lua_createtable(L, 0, (int)(sizeof tl_funcs / sizeof *tl_funcs) + 1);
  tl_setfuncs3(L, tl_funcs);
  lua_pushliteral(L, THREADLOCAL_VERSION);
  lua_setfield(L, -2, "version");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, -5);
  lua_pushvalue(L, -5);
  lua_pushvalue(L, -5);
  lua_pushcclosure(L, tl_call, 3);
  lua_setfield(L, -2, "__call");
  lua_setmetatable(L, -2);
  return 1;
}
