/*
** tl_thread.c: thread records, homes, thread exit, fork, and the module's
** one-time set-up.  Part of threadlocal.c (core: no Lua).  Everything here
** may run in a thread-exit hook, so nothing may touch a lua_State.
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

static pthread_once_t tl_once = PTHREAD_ONCE_INIT;
static int tl_once_err;
static pthread_key_t tl_exitkey; /* its destructor is tl_thread_exit */
static atomic_uint_fast64_t tl_nextid = 1;

/* Every live thread record and home.  With them, fork can take every lock,
** and a forked child can retire the other threads. */
static pthread_mutex_t tl_list_lock = PTHREAD_MUTEX_INITIALIZER;
static tl_thread *tl_list;
static tl_home *tl_homes;

/* The calling thread's record and id, read on every access. */
static _Thread_local tl_thread *tl_me TL_TLS_MODEL;
static _Thread_local uint64_t tl_myid TL_TLS_MODEL; /* tl_me->id, or 0 */

/*
** The calling thread's fields generation: a number no other thread, nor
** this one before, has had.  It changes whenever a shared local's fields
** on this thread may change (made, cleared, swapped by a run, released).
** So a cache of (generation, fields) is right while the generation stays.
** The hot paths then skip the map.  0: no record, so no fields.
** A record takes them in blocks, so that most changes need no atomic.
*/
#define TL_GENBLOCK 1024
static atomic_uint_fast64_t tl_nextgenblock = 1; /* block 0 would hold 0 */
static _Thread_local uint64_t tl_mygen TL_TLS_MODEL;

/* ---------------------------------------------------------------------- */
/* A thread's map of its shared fields                                    */
/* ---------------------------------------------------------------------- */

/*
** Linear probing keyed by the name's seeded hash, at most half full.  A
** thread pays for what it holds, not for every name the process made.
** A thread with no slots points at tl_noslots, which is never written.
*/
static tl_shslot tl_noslots[1];

/* Call after any change of which fields t holds, before anything runs
** that may read them.  The caller's generation moves.  Here t is the
** caller's record, except in a forked child retiring others.  There an
** extra move is harmless. */
static void tl_shmap_touch(tl_thread *t) {
  t->lastsl = NULL;
  if (tl_unlikely(t->gennext % TL_GENBLOCK == 0)) /* a block used up, or none yet */
    t->gennext = TL_GENBLOCK *
                 (uint64_t)atomic_fetch_add_explicit(&tl_nextgenblock, 1, memory_order_relaxed);
  tl_mygen = t->gennext++;
}

static void tl_shmap_reset(tl_thread *t) {
  t->shmap = tl_noslots;
  t->shmask = 0;
  t->shcount = 0;
  tl_shmap_touch(t);
}

/* t's slot of sl, or NULL. */
static TL_HOT tl_shslot *tl_shmap_find(const tl_thread *t, const threadlocal_shared *sl) {
  uint32_t i = sl->hash & t->shmask;
  for (;; i = (i + 1) & t->shmask) {
    tl_shslot *s = &t->shmap[i];
    if (s->sl == sl) return s;
    if (s->sl == NULL) return NULL;
  }
}

/* t's fields of sl, or NULL if it has none (t may be NULL). */
static TL_HOT tl_tab *tl_shfields_peek(const tl_thread *t, const threadlocal_shared *sl) {
  const tl_shslot *s;
  if (t == NULL) return NULL;
  s = &t->shmap[sl->hash & t->shmask];
  if (tl_unlikely(s->sl != sl)) s = s->sl == NULL ? NULL : tl_shmap_find(t, sl);
  return s != NULL ? s->fields : NULL;
}

/* The same, with the last answer kept in t (the C API's way). */
static TL_HOT tl_tab *tl_shfields_last(tl_thread *t, const threadlocal_shared *sl) {
  if (tl_unlikely(t->lastsl != sl)) {
    t->lastfields = tl_shfields_peek(t, sl);
    t->lastsl = sl;
  }
  return t->lastfields;
}

/* The threadlocal.run whose snapshot holds sl's fields on t now: the
** innermost that names it.  Or 0: the thread's own fields. */
static uint64_t tl_shmap_run(const tl_thread *t, const threadlocal_shared *sl) {
  const tl_shslot *s = tl_shmap_find(t, sl);
  return s != NULL ? s->run : 0;
}

/* Rebuilds t's map with n slots (a power of 2).  0, or -1 (memory). */
static int tl_shmap_resize(tl_thread *t, uint32_t n) {
  tl_shslot *old = t->shmap, *map = (tl_shslot *)tl_calloc(n, sizeof *map);
  uint32_t i, nold = t->shmask + 1;
  if (map == NULL) return -1;
  t->shmap = map;
  t->shmask = n - 1;
  if (old == tl_noslots) return 0;
  for (i = 0; i < nold; i++)
    if (old[i].sl != NULL) {
      uint32_t j = old[i].sl->hash & t->shmask;
      while (map[j].sl != NULL) j = (j + 1) & t->shmask;
      map[j] = old[i];
    }
  tl_free(old);
  return 0;
}

/* Makes room for n more slots, so that adding them cannot fail. */
static int tl_shmap_reserve(tl_thread *t, size_t n) {
  uint32_t cap = t->shmask + 1;
  if (n == 0) return 0;
  if (n > UINT32_MAX / 4 || t->shcount + n > UINT32_MAX / 4) return -1;
  if (t->shmap != tl_noslots && 2 * (t->shcount + n) <= cap) return 0;
  if (cap < 8) cap = 8;
  while (2 * (t->shcount + n) > cap) cap *= 2;
  return tl_shmap_resize(t, cap);
}

/* t's slot of sl, added empty if missing; NULL when out of memory. */
static tl_shslot *tl_shmap_get(tl_thread *t, threadlocal_shared *sl) {
  tl_shslot *s = tl_shmap_find(t, sl);
  uint32_t i;
  if (s != NULL) return s;
  if (tl_shmap_reserve(t, 1) != 0) return NULL;
  for (i = sl->hash & t->shmask; t->shmap[i].sl != NULL; i = (i + 1) & t->shmask) {}
  s = &t->shmap[i];
  s->sl = sl;
  s->fields = NULL;
  s->run = 0;
  t->shcount++;
  return s;
}

/* Removes s if it holds nothing, shifting later probes back.  A large
** map an eighth full shrinks, when memory allows. */
static void tl_shmap_drop(tl_thread *t, tl_shslot *s) {
  uint32_t i = (uint32_t)(s - t->shmap), j = i;
  if (s->fields != NULL || s->run != 0) return;
  for (;;) {
    uint32_t home;
    memset(&t->shmap[i], 0, sizeof t->shmap[i]); /* the walks read fields */
    do {
      j = (j + 1) & t->shmask;
      if (t->shmap[j].sl == NULL) goto shrink;
      home = t->shmap[j].sl->hash & t->shmask;
    } while (((j - home) & t->shmask) < ((j - i) & t->shmask)); /* j may stay */
    t->shmap[i] = t->shmap[j];
    i = j;
  }
shrink:
  if (--t->shcount > 0 && t->shmask >= 32 && 8 * t->shcount <= t->shmask + 1)
    (void)tl_shmap_resize(t, (t->shmask + 1) / 4);
}

/* Takes up to max ids of exited threads out of h, into ids; returns how
** many.  The state that owns h calls it, then drops their fields. */
static size_t tl_home_drain(tl_home *h, uint64_t *ids, size_t max) {
  size_t n, i, nd;
  if (atomic_load_explicit(&h->ndead, memory_order_relaxed) == 0) return 0;
  pthread_mutex_lock(&h->lock);
  nd = atomic_load_explicit(&h->ndead, memory_order_relaxed);
  n = nd < max ? nd : max;
  for (i = 0; i < n; i++) ids[i] = h->dead[nd - 1 - i];
  atomic_store(&h->ndead, nd - n);
  h->nreserved -= n;
  pthread_mutex_unlock(&h->lock);
  return n;
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
** Drops all of t's data, as at its exit.  It tells every home that t->id
** is dead.  It detaches t's shared fields, then frees them (destructors
** run).  So a destructor that calls back in finds a consistent thread.
*/
static void tl_thread_retire(tl_thread *t) {
  tl_shslot *map = t->shmap;
  uint32_t n = t->shmask + 1, i;
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
  tl_shmap_reset(t);
  if (map == tl_noslots) return;
  for (i = 0; i < n; i++)
    if (map[i].fields != NULL) tl_tab_free(map[i].fields);
  tl_free(map);
}

static void tl_list_remove(tl_thread *t) { /* tl_list_lock held */
  if (t->prev != NULL) t->prev->next = t->next; else tl_list = t->next;
  if (t->next != NULL) t->next->prev = t->prev;
}

static void tl_thread_free(tl_thread *t) {
  tl_thread_retire(t);
  tl_free(t->homes);
  tl_free(t->slab);
  tl_free(t->slabgen);
  tl_free(t->slabfree);
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
** fork: the forking thread takes every lock first (list, registry, homes).
** So the child sees no half-made change.  In the child only the forking
** thread exists.  Every other thread's record is retired as if that thread
** had exited.  Its shared values are freed (destructors run).  Its Local
** values become garbage of their states.
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
  tl_seed_init();
  if (pthread_key_create(&tl_exitkey, tl_thread_exit) != 0 ||
      pthread_atfork(tl_fork_prepare, tl_fork_unlock, tl_fork_child) != 0) {
    tl_once_err = 1;
    return;
  }
  /* Lua's lua_close dlcloses C modules.  But tl_exitkey's destructor and the
  ** shared locals must outlive every state.  So this object is never unloaded. */
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
    tl_shmap_reset(t);
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
      nh = (tl_home **)tl_reallocarray(t->homes, cap, sizeof *nh);
      if (nh == NULL) return -1;
      t->homes = nh;
      t->caphomes = cap;
    }
  }
  pthread_mutex_lock(&h->lock);
  if (h->nreserved == h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 8;
    uint64_t *nd = (uint64_t *)tl_reallocarray(h->dead, cap, sizeof *nd);
    if (nd == NULL) {
      pthread_mutex_unlock(&h->lock);
      return -1;
    }
    h->dead = nd;
    h->cap = cap;
  }
  h->nreserved++;
  pthread_mutex_unlock(&h->lock);
  atomic_fetch_add(&h->refs, 1);
  t->homes[t->nhomes++] = h;
  return 0;
}
