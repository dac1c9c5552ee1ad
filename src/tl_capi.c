/*
** tl_capi.c: each thread's fields of a shared local, and the C API of
** threadlocal.h.  Part of threadlocal.c (core: no Lua).
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

/*
** Starts t's fields of sl, when it has none yet.  If sl has defaults,
** they are a copy of them.  Else create makes them empty; without it,
** NULL.  Out of memory, it sets *err.
*/
static tl_tab *tl_shfields_start(tl_thread *t, threadlocal_shared *sl, int create, int *err) {
  tl_tab *defaults = atomic_load_explicit(&sl->defaults, memory_order_acquire);
  tl_tab *tab;
  tl_shslot *s;
  *err = 0;
  if (!create && defaults == NULL) return NULL;
  if ((s = tl_shmap_get(t, sl)) == NULL) goto fail;
  if (defaults != NULL) {
    if (tl_tab_clone(defaults, t, 0, &tab) != TL_COPY_OK) tab = NULL; /* fits: see tl_conv */
  } else
    tab = tl_tab_new(t, 0);
  s->fields = tab;
  tl_shmap_touch(t);
  if (tab == NULL) {
    tl_shmap_drop(t, s);
    goto fail;
  }
  return tab;
fail:
  *err = 1;
  return NULL;
}

/* Deletes t's fields of sl (destructors run). */
static void tl_shfields_clear(tl_thread *t, const threadlocal_shared *sl) {
  tl_shslot *s = tl_shmap_find(t, sl);
  tl_tab *tab;
  if (s == NULL || (tab = s->fields) == NULL) return;
  s->fields = NULL;
  tl_shmap_touch(t);
  tl_shmap_drop(t, s);
  tl_tab_free(tab);
}

/* ---------------------------------------------------------------------- */
/* C API                                                                  */
/* ---------------------------------------------------------------------- */

THREADLOCAL_API int threadlocal_shared_open(const char *name, size_t len,
                                            threadlocal_shared **out) {
  threadlocal_shared *sl;
  if ((name == NULL && len > 0) || len > THREADLOCAL_MAXLEN || out == NULL)
    return THREADLOCAL_ERRARG;
  if (name == NULL) name = "";
  if (tl_init() != 0 || (sl = tl_reg_open(name, len)) == NULL) return THREADLOCAL_ERRMEM;
  *out = sl;
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_shared_open_cstr(const char *name, threadlocal_shared **out) {
  if (name == NULL) return THREADLOCAL_ERRARG;
  return threadlocal_shared_open(name, strlen(name), out);
}

/* Every per-field call starts here: checks, then the calling thread.
** Its fields of sl go in *tab (NULL when it has none and create is 0). */
static int tl_capi_fields(threadlocal_shared *sl, const char *key, int create, tl_tab **tab) {
  tl_thread *t = tl_me; /* a record: the set-up is done, no pthread_once call */
  int err;
  if (sl == NULL || key == NULL) return THREADLOCAL_ERRARG;
  if (t == NULL && (tl_init() != 0 || (t = tl_thread_get()) == NULL)) return THREADLOCAL_ERRMEM;
  if ((*tab = tl_shfields_last(t, sl)) == NULL) *tab = tl_shfields_start(t, sl, create, &err);
  else err = 0;
  return err ? THREADLOCAL_ERRMEM : THREADLOCAL_OK;
}

/* Sets key to v (moved in) for the calling thread. */
static int tl_capi_set(threadlocal_shared *sl, const char *key, tl_val *v) {
  tl_tab *tab;
  tl_key k;
  tl_val old;
  int rc = tl_capi_fields(sl, key, v->type != TL_TNIL, &tab);
  if (rc != THREADLOCAL_OK) return rc;
  if (tab == NULL) return THREADLOCAL_OK; /* deleting from nothing */
  tl_key_str(&k, key, strlen(key));
  if (tl_tab_put(tab, &k, v, &old) != 0) return THREADLOCAL_ERRMEM;
  tl_val_free(&old);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_set_nil(threadlocal_shared *sl, const char *key) {
  tl_val v;
  v.type = TL_TNIL;
  return tl_capi_set(sl, key, &v);
}

THREADLOCAL_API int threadlocal_delete(threadlocal_shared *sl, const char *key) {
  return threadlocal_set_nil(sl, key);
}

THREADLOCAL_API int threadlocal_set_boolean(threadlocal_shared *sl, const char *key,
                                            int value) {
  tl_val v;
  v.type = TL_TBOOL;
  v.u.b = value != 0;
  return tl_capi_set(sl, key, &v);
}

THREADLOCAL_API int threadlocal_set_integer(threadlocal_shared *sl, const char *key,
                                            int64_t value) {
  tl_val v;
  v.type = TL_TINT;
  v.u.i = value;
  return tl_capi_set(sl, key, &v);
}

THREADLOCAL_API int threadlocal_set_float(threadlocal_shared *sl, const char *key,
                                          double value) {
  tl_val v;
  v.type = TL_TFLOAT;
  v.u.f = value;
  return tl_capi_set(sl, key, &v);
}

THREADLOCAL_API int threadlocal_set_string(threadlocal_shared *sl, const char *key,
                                           const char *s, size_t len) {
  tl_val v;
  int rc;
  if ((s == NULL && len > 0) || len > THREADLOCAL_MAXLEN) return THREADLOCAL_ERRARG;
  v.type = TL_TSTR;
  if ((v.u.str.s = tl_strdup(s, len)) == NULL) return THREADLOCAL_ERRMEM;
  v.u.str.len = len;
  if ((rc = tl_capi_set(sl, key, &v)) != THREADLOCAL_OK) tl_free(v.u.str.s);
  return rc;
}

THREADLOCAL_API int threadlocal_set_pointer(threadlocal_shared *sl, const char *key,
                                            void *p, void (*destructor)(void *)) {
  tl_val v;
  v.type = TL_TPTR;
  v.u.ptr.p = p;
  v.u.ptr.dtor = destructor;
  return tl_capi_set(sl, key, &v); /* on failure the destructor is not run */
}

/* *out = v, a stored value (a string is borrowed; a table is only its type). */
static TL_HOT void tl_capi_out(const tl_val *v, threadlocal_value *out) {
  memset(out, 0, sizeof *out);
  out->type = THREADLOCAL_NIL;
  switch (v->type) {
    case TL_TBOOL: out->type = THREADLOCAL_BOOLEAN; out->u.boolean = v->u.b; break;
    case TL_TINT: out->type = THREADLOCAL_INTEGER; out->u.integer = v->u.i; break;
    case TL_TFLOAT: out->type = THREADLOCAL_FLOAT; out->u.number = v->u.f; break;
    case TL_TSTR:
      out->type = THREADLOCAL_STRING;
      out->u.string.ptr = v->u.str.s;
      out->u.string.len = v->u.str.len;
      break;
    case TL_TPTR: out->type = THREADLOCAL_POINTER; out->u.pointer = v->u.ptr.p; break;
    case TL_TTAB: out->type = THREADLOCAL_TABLE; break;
  }
}

THREADLOCAL_API int threadlocal_get(threadlocal_shared *sl, const char *key,
                                    threadlocal_value *out) {
  tl_tab *tab;
  tl_entry *e = NULL;
  tl_key k;
  int rc;
  if (out == NULL) return THREADLOCAL_ERRARG;
  if ((rc = tl_capi_fields(sl, key, 0, &tab)) != THREADLOCAL_OK) return rc;
  if (tab != NULL) {
    tl_key_str(&k, key, strlen(key));
    e = tl_tab_find(tab, &k);
  }
  if (e == NULL) {
    memset(out, 0, sizeof *out);
    out->type = THREADLOCAL_NIL;
  } else
    tl_capi_out(&e->val, out);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_clear(threadlocal_shared *sl) {
  if (sl == NULL) return THREADLOCAL_ERRARG;
  if (tl_me != NULL) tl_shfields_clear(tl_me, sl);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_release(void) {
  tl_thread *t = tl_me;
  if (t != NULL && t->inits > 0) /* an init is building fields for this id */
    return THREADLOCAL_ERRARG;
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
/* Any key, any depth: nodes (C API)                                      */
/* ---------------------------------------------------------------------- */

/* *k for a key given from C; -1 for a bad one.  As in Lua, NaN is bad
** and an integral float is that integer. */
static int tl_capi_key(const threadlocal_value *kv, tl_key *k) {
  if (kv == NULL) return -1;
  switch (kv->type) {
    case THREADLOCAL_BOOLEAN: tl_key_bool(k, kv->u.boolean); return 0;
    case THREADLOCAL_INTEGER: tl_key_int(k, kv->u.integer); return 0;
    case THREADLOCAL_FLOAT:
      if (kv->u.number != kv->u.number) return -1;
      tl_key_float(k, kv->u.number);
      return 0;
    case THREADLOCAL_STRING: {
      const char *s = kv->u.string.ptr;
      size_t len = kv->u.string.len;
      if ((s == NULL && len > 0) || len > THREADLOCAL_MAXLEN) return -1;
      tl_key_str(k, s != NULL ? s : "", len);
      return 0;
    }
    default: return -1;
  }
}

/* *out = the key of e, a live entry (a string is borrowed from e). */
static void tl_capi_outkey(const tl_entry *e, threadlocal_value *out) {
  tl_key k;
  tl_entry_key(&k, e);
  memset(out, 0, sizeof *out);
  switch (k.type) {
    case TL_TSTR:
      out->type = THREADLOCAL_STRING;
      out->u.string.ptr = k.u.str.s;
      out->u.string.len = k.u.str.len;
      break;
    case TL_TINT: out->type = THREADLOCAL_INTEGER; out->u.integer = k.u.i; break;
    case TL_TFLOAT: out->type = THREADLOCAL_FLOAT; out->u.number = k.u.f; break;
    default: out->type = THREADLOCAL_BOOLEAN; out->u.boolean = k.u.b; break;
  }
}

/* The node of tab, a table of its owner's slab. */
static void tl_node_of(const tl_tab *tab, threadlocal_node *out) {
  out->sh = NULL;
  out->owner_id = tab->owner->id;
  out->slot = tab->slot;
  out->gen = tab->owner->slabgen[tab->slot];
}

/*
** The table node names on the calling thread, in *tab.  A root resolves
** to the thread's fields (NULL when it has none, unless create).  A
** nested node is checked as a Lua proxy is: by id, slot and generation.
*/
static int tl_node_tab(const threadlocal_node *node, int create, tl_tab **tab) {
  tl_thread *t;
  int err;
  if (node == NULL) return THREADLOCAL_ERRARG;
  if (node->sh != NULL) {
    if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
    if ((*tab = tl_shfields_peek(t, node->sh)) == NULL)
      *tab = tl_shfields_start(t, node->sh, create, &err);
    else
      err = 0;
    return err ? THREADLOCAL_ERRMEM : THREADLOCAL_OK;
  }
  if (node->owner_id == 0) return THREADLOCAL_ERRARG; /* never made */
  t = tl_me;
  if (t == NULL || t->id != node->owner_id) return THREADLOCAL_ERRTHREAD;
  if (node->slot >= t->nslab || t->slabgen[node->slot] != node->gen) return THREADLOCAL_ERRSTALE;
  *tab = t->slab[node->slot];
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_root(threadlocal_shared *sh, threadlocal_node *out) {
  if (sh == NULL || out == NULL) return THREADLOCAL_ERRARG;
  memset(out, 0, sizeof *out);
  out->sh = sh;
  return THREADLOCAL_OK;
}

/*
** Follows path[0..n) from node.  It sets *e to the last key's entry, or
** to NULL when a key on the way is absent.  Every key is checked first, so that a
** bad one is reported whatever the data holds.
*/
static int tl_node_walk(const threadlocal_node *node, const threadlocal_value *path, size_t n,
                        tl_entry **e) {
  tl_key k[TL_MAXDEPTH + 1];
  tl_tab *tab;
  size_t i;
  int rc;
  if (path == NULL || n == 0 || n > TL_MAXDEPTH + 1) return THREADLOCAL_ERRARG;
  for (i = 0; i < n; i++)
    if (tl_capi_key(&path[i], &k[i]) != 0) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_tab(node, 0, &tab)) != THREADLOCAL_OK) return rc;
  *e = NULL;
  for (i = 0; tab != NULL; i++) {
    if ((*e = tl_tab_find(tab, &k[i])) == NULL || i == n - 1) break;
    if ((*e)->val.type != TL_TTAB) return THREADLOCAL_ERRTYPE;
    tab = (*e)->val.u.tab;
  }
  if (i != n - 1) *e = NULL; /* absent on the way */
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_node_get(const threadlocal_node *node,
                                         const threadlocal_value *path, size_t n,
                                         threadlocal_value *out) {
  tl_entry *e;
  int rc;
  if (out == NULL) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_walk(node, path, n, &e)) != THREADLOCAL_OK) return rc;
  if (e == NULL) {
    memset(out, 0, sizeof *out);
    out->type = THREADLOCAL_NIL;
  } else
    tl_capi_out(&e->val, out);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_node_child(const threadlocal_node *node,
                                           const threadlocal_value *path, size_t n,
                                           threadlocal_node *out) {
  tl_entry *e;
  int rc;
  if (out == NULL) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_walk(node, path, n, &e)) != THREADLOCAL_OK) return rc;
  if (e == NULL || e->val.type != TL_TTAB) return THREADLOCAL_ERRTYPE;
  tl_node_of(e->val.u.tab, out);
  return THREADLOCAL_OK;
}

/* node's table[key] = v (moved in; nil deletes).  On failure v is still the
** caller's.  The old value is freed last: a destructor may call back in. */
static int tl_node_put(const threadlocal_node *node, const threadlocal_value *key, tl_val *v) {
  tl_tab *tab;
  tl_key k;
  tl_val old;
  int rc;
  if (tl_capi_key(key, &k) != 0) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_tab(node, v->type != TL_TNIL, &tab)) != THREADLOCAL_OK) return rc;
  if (tab == NULL) return THREADLOCAL_OK; /* deleting from nothing */
  if (tl_tab_put(tab, &k, v, &old) != 0) return THREADLOCAL_ERRMEM;
  tl_val_free(&old);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_node_set(const threadlocal_node *node,
                                         const threadlocal_value *key,
                                         const threadlocal_value *value) {
  tl_val v;
  int rc;
  if (value == NULL) return THREADLOCAL_ERRARG;
  switch (value->type) {
    case THREADLOCAL_NIL: v.type = TL_TNIL; break;
    case THREADLOCAL_BOOLEAN: v.type = TL_TBOOL; v.u.b = value->u.boolean != 0; break;
    case THREADLOCAL_INTEGER: v.type = TL_TINT; v.u.i = value->u.integer; break;
    case THREADLOCAL_FLOAT: v.type = TL_TFLOAT; v.u.f = value->u.number; break;
    case THREADLOCAL_POINTER:
      v.type = TL_TPTR;
      v.u.ptr.p = value->u.pointer;
      v.u.ptr.dtor = NULL;
      break;
    case THREADLOCAL_STRING: {
      const char *s = value->u.string.ptr;
      size_t len = value->u.string.len;
      if ((s == NULL && len > 0) || len > THREADLOCAL_MAXLEN) return THREADLOCAL_ERRARG;
      if ((v.u.str.s = tl_strdup(s, len)) == NULL) return THREADLOCAL_ERRMEM;
      v.u.str.len = len;
      v.type = TL_TSTR;
      if ((rc = tl_node_put(node, key, &v)) != THREADLOCAL_OK) tl_free(v.u.str.s);
      return rc;
    }
    default: return THREADLOCAL_ERRARG; /* a table: threadlocal_node_newtable */
  }
  return tl_node_put(node, key, &v);
}

THREADLOCAL_API int threadlocal_node_set_pointer(const threadlocal_node *node,
                                                 const threadlocal_value *key, void *p,
                                                 void (*destructor)(void *)) {
  tl_val v;
  v.type = TL_TPTR;
  v.u.ptr.p = p;
  v.u.ptr.dtor = destructor;
  return tl_node_put(node, key, &v); /* on failure the destructor is not run */
}

THREADLOCAL_API int threadlocal_node_delete(const threadlocal_node *node,
                                            const threadlocal_value *key) {
  tl_val v;
  v.type = TL_TNIL;
  return tl_node_put(node, key, &v);
}

THREADLOCAL_API int threadlocal_node_newtable(const threadlocal_node *node,
                                              const threadlocal_value *key,
                                              threadlocal_node *out) {
  threadlocal_node made;
  tl_tab *tab, *nt;
  tl_key k;
  tl_val v, old;
  int rc;
  if (tl_capi_key(key, &k) != 0) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_tab(node, 1, &tab)) != THREADLOCAL_OK) return rc;
  if (tab->depth >= TL_MAXDEPTH) return THREADLOCAL_ERRDEPTH; /* as Lua's tl_conv_table */
  if ((nt = tl_tab_new(tab->owner, tab->depth + 1)) == NULL) return THREADLOCAL_ERRMEM;
  tl_node_of(nt, &made); /* now: the old value's destructor may drop nt */
  v.type = TL_TTAB;
  v.u.tab = nt;
  if (tl_tab_put(tab, &k, &v, &old) != 0) {
    tl_tab_free(nt);
    return THREADLOCAL_ERRMEM;
  }
  if (out != NULL) *out = made;
  tl_val_free(&old);
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_node_iter(const threadlocal_node *node, threadlocal_iter *it) {
  tl_tab *tab;
  int rc;
  if (it == NULL) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_tab(node, 0, &tab)) != THREADLOCAL_OK) return rc;
  memset(it, 0, sizeof *it);
  if (tab == NULL) {
    it->empty = 1;
    return THREADLOCAL_OK;
  }
  tl_node_of(tab, &it->node);
  it->version = tab->version;
  return THREADLOCAL_OK;
}

/* A table's version changes with every write: tl_tab_put and Lua's
** in-place stores.  A changed one ends the walk, as a rebuild may have
** moved its place in e[]. */
THREADLOCAL_API int threadlocal_next(threadlocal_iter *it, threadlocal_value *key,
                                     threadlocal_value *value) {
  tl_tab *tab;
  int rc;
  if (it == NULL || key == NULL) return THREADLOCAL_ERRARG;
  if (!it->empty) {
    if ((rc = tl_node_tab(&it->node, 0, &tab)) != THREADLOCAL_OK) return rc;
    if (tab->version != it->version) return THREADLOCAL_ERRSTALE;
    for (; it->next < tab->used; it->next++) {
      const tl_entry *e = &tab->e[it->next];
      if (e->status != TL_LIVE) continue;
      tl_capi_outkey(e, key);
      if (value != NULL) tl_capi_out(&e->val, value);
      it->next++;
      return THREADLOCAL_OK;
    }
  }
  memset(key, 0, sizeof *key);
  key->type = THREADLOCAL_NIL;
  if (value != NULL) {
    memset(value, 0, sizeof *value);
    value->type = THREADLOCAL_NIL;
  }
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_set_defaults(threadlocal_shared *sh,
                                             const threadlocal_node *from) {
  tl_tab *tab, *copy;
  int rc;
  if (sh == NULL) return THREADLOCAL_ERRARG;
  if ((rc = tl_node_tab(from, 0, &tab)) != THREADLOCAL_OK) return rc;
  if (tab == NULL)
    copy = tl_tab_new(NULL, 0);
  else if (tl_tab_clone(tab, NULL, 0, &copy) != TL_COPY_OK) /* never deeper than tab */
    copy = NULL;
  if (copy == NULL) return THREADLOCAL_ERRMEM;
  return tl_reg_setdefaults(sh, copy) == 0 ? THREADLOCAL_OK : THREADLOCAL_ERRDEFAULTS;
}

THREADLOCAL_API const char *threadlocal_strerror(int code) {
  switch (code) {
    case THREADLOCAL_OK: return "no error";
    case THREADLOCAL_ERRMEM: return "out of memory";
    case THREADLOCAL_ERRARG: return "bad argument";
    case THREADLOCAL_ERRSTALE: return "stale node: its table was replaced, deleted or cleared";
    case THREADLOCAL_ERRTHREAD: return "node of another thread";
    case THREADLOCAL_ERRTYPE: return "not a table";
    case THREADLOCAL_ERRDEPTH: return "tables nested too deep";
    case THREADLOCAL_ERRDEFAULTS: return "the shared local already has other defaults";
    default: return "unknown code";
  }
}
