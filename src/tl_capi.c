/*
** tl_capi.c: each thread's fields of a shared local, and the C API of
** threadlocal.h.  Part of threadlocal.c (core: no Lua).
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

/*
** t's fields of sl, when it has none yet: with create, or when sl has
** defaults, they are made (a copy of the defaults); otherwise NULL.  *err
** is set when out of memory.
*/
static tl_tab *tl_shfields_start(tl_thread *t, tl_sloc *sl, int create, int *err) {
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
  if ((s->fields = tab) == NULL) {
    tl_shmap_drop(t, s);
    goto fail;
  }
  return tab;
fail:
  *err = 1;
  return NULL;
}

/* Deletes t's fields of sl (destructors run). */
static void tl_shfields_clear(tl_thread *t, const tl_sloc *sl) {
  tl_shslot *s = tl_shmap_find(t, sl);
  tl_tab *tab;
  if (s == NULL || (tab = s->fields) == NULL) return;
  s->fields = NULL;
  tl_shmap_drop(t, s);
  tl_tab_free(tab);
}

/* ---------------------------------------------------------------------- */
/* C API                                                                  */
/* ---------------------------------------------------------------------- */

THREADLOCAL_API int threadlocal_shared_open(const char *name, size_t len,
                                            threadlocal_shared **out) {
  tl_sloc *sl;
  if ((name == NULL && len > 0) || len > THREADLOCAL_MAXLEN || out == NULL)
    return THREADLOCAL_ERRARG;
  if (name == NULL) name = "";
  if (tl_init() != 0 || (sl = tl_sloc_open(name, len)) == NULL) return THREADLOCAL_ERRMEM;
  *out = sl;
  return THREADLOCAL_OK;
}

/* Every per-field call starts here: checks, the calling thread, and its
** fields of sl in *tab (NULL when it has none and create is 0). */
static int tl_capi_fields(tl_sloc *sl, const char *key, int create, tl_tab **tab) {
  tl_thread *t;
  int err;
  if (sl == NULL || key == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
  if ((*tab = tl_shfields_peek(t, sl)) == NULL) *tab = tl_shfields_start(t, sl, create, &err);
  else err = 0;
  return err ? THREADLOCAL_ERRMEM : THREADLOCAL_OK;
}

/* Sets key to v (moved in) for the calling thread. */
static int tl_capi_set(tl_sloc *sl, const char *key, tl_val *v) {
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
