/*
** tl_ids.c: process-wide ids of shared locals and of keys.  An id is a
** number that code may pass where no pointer may go.  LuaJIT's FFI
** functions take ids, since any Lua code can call them.  Part of
** threadlocal.c (the core).
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

/*
** An append-only array that any thread reads without a lock.  A full array
** is copied into one twice its size.  The old one is kept, linked from the
** new one, since a reader may still hold it.  Nothing here is ever freed,
** as shared locals are not.  The keys are bounded (TL_IDS_MAXKEYS,
** TL_IDS_KEYLEN).
*/
typedef struct tl_idarr {
  struct tl_idarr *prev;
  uint32_t cap;
  _Atomic uint32_t n;
  const void *p[];
} tl_idarr;

/* Objects by id, counting from 0.  The index maps their hashes to their
** ids + 1, by linear probing; 0 is empty.  Written under tl_reg_lock,
** which fork takes. */
typedef struct tl_ids {
  _Atomic(tl_idarr *) arr;
  uint32_t *ix;
  uint32_t ixmask;
} tl_ids;

/*
** A key as the FFI functions look it up: a copy, kept for good.  A fields
** table caches key addresses (kaddr) in TL_KCACHE slots, picked by bits 4
** and 5 of the address.  So s is placed in buf for key id i to take slot
** i % TL_KCACHE.  Keys learnt together then do not evict each other.
*/
typedef struct tl_idkey {
  const char *s; /* in buf, NUL-terminated */
  uint32_t hash;
  uint32_t len;
  char buf[]; /* 16-aligned, as malloc's blocks */
} tl_idkey;

/* Keys past these get no id: they are read through the C __index.  So the
** keys a process ever reads cost at most about 3.5 MB here. */
#define TL_IDS_MAXKEYS ((uint32_t)1 << 14)
#define TL_IDS_KEYLEN 64

/* The arrays start empty, not NULL: one test less on every read. */
static TL_MAYBE_UNUSED tl_idarr tl_ids_noshared, tl_ids_nokeys;
static TL_MAYBE_UNUSED tl_ids tl_ids_shared = { &tl_ids_noshared, NULL, 0 }; /* threadlocal_shared */
static TL_MAYBE_UNUSED tl_ids tl_ids_keys = { &tl_ids_nokeys, NULL, 0 };   /* tl_idkey */

static TL_MAYBE_UNUSED uint32_t tl_ids_hashof(const tl_ids *ids, const void *p) {
  return ids == &tl_ids_shared ? ((const threadlocal_shared *)p)->hash : ((const tl_idkey *)p)->hash;
}

/* Whether object p is the one sought: the shared local sl, or the key
** s[0..len). */
static TL_MAYBE_UNUSED int tl_ids_is(const tl_ids *ids, const void *p, const threadlocal_shared *sl, const char *s,
                     size_t len) {
  const tl_idkey *k = (const tl_idkey *)p;
  if (ids == &tl_ids_shared) return p == sl;
  return k->len == len && memcmp(k->s, s, len) == 0;
}

/* Makes room for id n in the array and the index, kept at most half full.
** Returns 0, or -1 when out of memory.  Lock held. */
static TL_MAYBE_UNUSED int tl_ids_reserve(tl_ids *ids, uint32_t n) {
  tl_idarr *a = atomic_load_explicit(&ids->arr, memory_order_relaxed), *na;
  uint32_t cap, i;
  if (ids->ix == NULL || 2 * (n + 1) > ids->ixmask + 1) {
    uint32_t mask = ids->ix == NULL ? 63 : 2 * ids->ixmask + 1, *ix;
    if ((ix = (uint32_t *)tl_calloc((size_t)mask + 1, sizeof *ix)) == NULL) return -1;
    for (i = 0; i < n; i++) {
      uint32_t j = tl_ids_hashof(ids, a->p[i]) & mask;
      while (ix[j] != 0) j = (j + 1) & mask;
      ix[j] = i + 1;
    }
    tl_free(ids->ix);
    ids->ix = ix;
    ids->ixmask = mask;
  }
  if (n < a->cap) return 0;
  cap = a->cap ? 2 * a->cap : 16;
  if ((na = (tl_idarr *)tl_malloc(sizeof *na + cap * sizeof na->p[0])) == NULL) return -1;
  na->prev = a;
  na->cap = cap;
  if (n > 0) memcpy((void *)na->p, (const void *)a->p, n * sizeof na->p[0]);
  atomic_init(&na->n, n);
  atomic_store_explicit(&ids->arr, na, memory_order_release);
  return 0;
}

/*
** Sets *id to the id of the shared local sl, or of the key s[0..len) when
** sl is NULL.  Makes it if need be; hash is sl->hash or the key's.
** Returns 0, or -1 when out of memory or past the bounds on keys.
*/
static TL_MAYBE_UNUSED int tl_ids_id(tl_ids *ids, uint32_t hash, const threadlocal_shared *sl, const char *s, size_t len,
                     uint32_t *id) {
  tl_idarr *a;
  tl_idkey *k = NULL;
  const void *p = sl;
  uint32_t n, j;
  int rc = -1;
  pthread_mutex_lock(&tl_reg_lock);
  a = atomic_load_explicit(&ids->arr, memory_order_relaxed);
  n = atomic_load_explicit(&a->n, memory_order_relaxed);
  if (ids->ix != NULL)
    for (j = hash & ids->ixmask; ids->ix[j] != 0; j = (j + 1) & ids->ixmask)
      if (tl_ids_is(ids, a->p[ids->ix[j] - 1], sl, s, len)) {
        *id = ids->ix[j] - 1;
        rc = 0;
        goto done;
      }
  if (sl == NULL) {
    char *d;
    if (n >= TL_IDS_MAXKEYS || len > TL_IDS_KEYLEN ||
        (k = (tl_idkey *)tl_malloc(sizeof *k + 16 * (TL_KCACHE - 1) + len + 1)) == NULL)
      goto done;
    /* slot n % TL_KCACHE, picked as tl_tab_findstr picks it */
    d = k->buf + 16 * ((n - (uint32_t)((uintptr_t)k->buf >> 4)) & (TL_KCACHE - 1));
    memcpy(d, s, len);
    d[len] = '\0';
    k->s = d;
    k->hash = hash;
    k->len = (uint32_t)len;
    p = k;
  }
  if (n == UINT32_MAX / 4 || tl_ids_reserve(ids, n) != 0) {
    tl_free(k);
    goto done;
  }
  for (j = hash & ids->ixmask; ids->ix[j] != 0; j = (j + 1) & ids->ixmask) {}
  ids->ix[j] = n + 1;
  a = atomic_load_explicit(&ids->arr, memory_order_relaxed);
  a->p[n] = p;
  atomic_store_explicit(&a->n, n + 1, memory_order_release);
  *id = n;
  rc = 0;
done:
  pthread_mutex_unlock(&tl_reg_lock);
  return rc;
}

/* Object i of ids, or NULL when i is no id yet: any thread, no lock. */
static inline const void *tl_ids_at(const tl_ids *ids, uint32_t i) {
  const tl_idarr *a = atomic_load_explicit(&ids->arr, memory_order_acquire);
  return i < atomic_load_explicit(&a->n, memory_order_acquire) ? a->p[i] : NULL;
}
