/*
** tl_snapshot.c: moving shared values between a thread and owner-less
** storage.  Snapshots of a thread's shared fields: capture on one thread,
** install on another.  Part of threadlocal.c (core: no Lua).
**
** A thread owns its tables, in its slab, so that proxies can name them.
** Owner-less tables are defaults, snapshots and values a scope put aside.
** Only owner-less tables may outlive their thread or cross to another.
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

/* Tables in tab's tree, itself included (bounded by the nesting limit). */
static size_t tl_tab_ntables(const tl_tab *tab) {
  size_t n = 1;
  uint32_t i;
  for (i = 0; i < tab->cap; i++)
    if (tab->e[i].status == TL_LIVE && tab->e[i].val.type == TL_TTAB)
      n += tl_tab_ntables(tab->e[i].val.u.tab);
  return n;
}

static size_t tl_val_ntables(const tl_val *v) {
  return v->type == TL_TTAB ? tl_tab_ntables(v->u.tab) : 0;
}

/* Makes room in t's slab for n more tables, so that adopting them cannot
** fail half-way.  Returns 0, or -1 when out of memory. */
static int tl_slab_reserve(tl_thread *t, size_t n) {
  if (n <= t->nslabfree) return 0;
  n -= t->nslabfree;
  if (n > UINT32_MAX) return -1;
  return tl_slab_grow(t, (uint32_t)n);
}

/* Moves an owner-less tree into t's slab; room must be reserved. */
static void tl_tab_adopt(tl_tab *tab, tl_thread *t) {
  uint32_t i;
  (void)tl_slab_add(t, tab); /* cannot fail: reserved */
  tab->owner = t;
  tab->version = t->clock++;
  memset(tab->kaddr, 0, sizeof tab->kaddr);
  for (i = 0; i < tab->cap; i++)
    if (tab->e[i].status == TL_LIVE && tab->e[i].val.type == TL_TTAB)
      tl_tab_adopt(tab->e[i].val.u.tab, t);
}

/* Takes a tree out of its owner's slab (its proxies go stale). */
static void tl_tab_disown(tl_tab *tab) {
  uint32_t i;
  if (tab->owner != NULL) tl_slab_remove(tab->owner, tab);
  tab->owner = NULL;
  for (i = 0; i < tab->cap; i++)
    if (tab->e[i].status == TL_LIVE && tab->e[i].val.type == TL_TTAB)
      tl_tab_disown(tab->e[i].val.u.tab);
}

static void tl_val_adopt(tl_val *v, tl_thread *t) {
  if (v->type == TL_TTAB) tl_tab_adopt(v->u.tab, t);
}

static void tl_val_disown(tl_val *v) {
  if (v->type == TL_TTAB) tl_tab_disown(v->u.tab);
}

/* A field a scope replaced: old is TL_TNIL where the field was absent. */
typedef struct tl_saved {
  tl_val key, old;
} tl_saved;

static void tl_saved_free(tl_saved *saved, size_t n) {
  size_t i;
  if (saved == NULL) return; /* a Local's scope */
  for (i = 0; i < n; i++) {
    tl_val_free(&saved[i].key);
    tl_val_free(&saved[i].old);
  }
  tl_free(saved);
}

/* Puts back saved[i] for i < n, last first.  What they replace is freed
** after, once fields is consistent: a destructor may call back in and
** clear it.  Returns the number still to restore: 0, or more when out of
** memory. */
static size_t tl_saved_restore(tl_thread *t, tl_tab *fields, tl_saved *saved, size_t n) {
  size_t need = 0, i, left;
  for (i = 0; i < n; i++) need += tl_val_ntables(&saved[i].old);
  if (tl_slab_reserve(t, need) != 0) return n;
  for (left = n; left > 0; left--) {
    tl_saved *s = &saved[left - 1];
    tl_key k;
    tl_val cur;
    tl_key_of(&k, &s->key);
    tl_val_adopt(&s->old, t);
    if (tl_tab_put(fields, &k, &s->old, &cur) != 0) {
      tl_val_disown(&s->old);
      break;
    }
    s->old = cur; /* freed below */
  }
  for (i = left; i < n; i++) {
    tl_val_free(&saved[i].key);
    tl_val_free(&saved[i].old);
  }
  return left;
}

/* Moves every field of conv into fields, saving what each replaced in a
** new *saved of *n entries.  Out of memory, it undoes its work and returns
** -1.  Then *n is what could not be put back: 0 unless undoing ran out too. */
static int tl_saved_apply(tl_tab *fields, tl_tab *conv, tl_saved **saved, size_t *n) {
  tl_thread *t = fields->owner;
  tl_saved *sv;
  size_t k = 0;
  uint32_t i;
  *saved = NULL;
  *n = 0;
  if ((sv = (tl_saved *)tl_calloc(conv->count + 1u, sizeof *sv)) == NULL) return -1;
  if (tl_slab_reserve(t, tl_tab_ntables(conv)) != 0) {
    tl_free(sv);
    return -1;
  }
  for (i = 0; i < conv->cap; i++) {
    tl_entry *e = &conv->e[i];
    tl_key key;
    if (e->status != TL_LIVE) continue;
    tl_entry_key(&key, e);
    tl_val_adopt(&e->val, t);
    if (tl_tab_put(fields, &key, &e->val, &sv[k].old) != 0) {
      tl_val_disown(&e->val);
      break;
    }
    tl_val_disown(&sv[k].old);
    tl_entry_takekey(e, &sv[k++].key); /* moved out of conv */
    e->val.type = TL_TNIL;
  }
  *saved = sv;
  *n = k;
  if (i == conv->cap) return 0;
  *n = tl_saved_restore(t, fields, sv, k); /* out of memory: undo */
  return -1;
}

/*
** A snapshot: for each of some shared locals, owner-less fields (NULL: the
** thread had none).  Installing one moves its tables in and hands back
** what they replaced, moved out with their destructors.
*/
struct threadlocal_snapshot {
  size_t n;
  struct tl_snapentry {
    threadlocal_shared *sl;
    tl_tab *fields;
  } e[];
};

typedef threadlocal_snapshot tl_snap;

static tl_snap *tl_snap_new(size_t n) {
  tl_snap *s;
  if (n > (SIZE_MAX - sizeof *s) / sizeof s->e[0]) return NULL;
  s = (tl_snap *)tl_malloc(sizeof *s + n * sizeof s->e[0]);
  if (s != NULL) {
    s->n = n;
    memset(s->e, 0, n * sizeof s->e[0]);
  }
  return s;
}

static void tl_snap_free(tl_snap *s) {
  size_t i;
  if (s == NULL) return;
  for (i = 0; i < s->n; i++)
    if (s->e[i].fields != NULL) tl_tab_free(s->e[i].fields);
  tl_free(s);
}

/* Makes room on t for swapping in s, so that tl_snap_swapin cannot fail.
** Returns 0, or -1 when out of memory. */
static int tl_snap_reserve(tl_thread *t, const tl_snap *s) {
  size_t i, ntables = 0;
  for (i = 0; i < s->n; i++)
    if (s->e[i].fields != NULL) ntables += tl_tab_ntables(s->e[i].fields);
  return tl_shmap_reserve(t, s->n) == 0 && tl_slab_reserve(t, ntables) == 0 ? 0 : -1;
}

/*
** Moves s's fields into t's slots, in order; aside[i] gets what entry i
** replaced (still t's).  A run marks its slots with its id; 0 keeps the
** marks.  Room must be reserved.
*/
static void tl_snap_swapin(tl_thread *t, tl_snap *s, uint64_t run, tl_shslot *aside) {
  size_t i;
  for (i = 0; i < s->n; i++) {
    tl_shslot *slot = tl_shmap_get(t, s->e[i].sl); /* cannot fail: reserved */
    aside[i] = *slot;
    slot->fields = s->e[i].fields;
    if (slot->fields != NULL) tl_tab_adopt(slot->fields, t);
    if (run != 0) slot->run = run;
    s->e[i].fields = NULL;
  }
  tl_shmap_touch(t);
}

/* Drops the slots of aside's shared locals that hold nothing now. */
static void tl_snap_tidy(tl_thread *t, const tl_shslot *aside, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    tl_shslot *slot = tl_shmap_find(t, aside[i].sl);
    if (slot != NULL) tl_shmap_drop(t, slot);
  }
}

/* Puts back what tl_snap_swapin set aside, last first, and frees what the
** swap put there.  The slots are there: a run's mark keeps them. */
static void tl_snap_swapback(tl_thread *t, tl_shslot *aside, size_t n) {
  size_t i;
  for (i = n; i > 0; i--) {
    tl_shslot *slot = tl_shmap_find(t, aside[i - 1].sl);
    tl_tab *job = slot != NULL ? slot->fields : NULL;
    if (slot != NULL) {
      *slot = aside[i - 1];
      tl_shmap_touch(t);
      if (job != NULL) tl_tab_free(job); /* may call back in: slot is not used after */
    } else if (aside[i - 1].fields != NULL)
      tl_tab_free(aside[i - 1].fields);
  }
  /* A slot put back holding something stays; whatever empties a slot later
  ** drops it.  So only the entries that held nothing need a look. */
  for (i = 0; i < n; i++)
    if (aside[i].fields == NULL && aside[i].run == 0) {
      tl_shslot *slot = tl_shmap_find(t, aside[i].sl);
      if (slot != NULL) tl_shmap_drop(t, slot);
    }
}

/*
** Installs s on t: each entry's fields replace t's.  What was there goes
** to *replaced, moved out with destructors and all.  On success s is
** consumed.  Returns 0, or -1 when out of memory: then nothing changed and
** s is untouched.
*/
static int tl_snap_install(tl_thread *t, tl_snap *s, tl_snap **replaced) {
  size_t i;
  tl_snap *r = tl_snap_new(s->n);
  tl_shslot *aside = (tl_shslot *)tl_calloc(s->n + 1, sizeof *aside);
  if (r == NULL || aside == NULL || tl_snap_reserve(t, s) != 0) {
    tl_free(r);
    tl_free(aside);
    return -1;
  }
  tl_snap_swapin(t, s, 0, aside);
  for (i = 0; i < s->n; i++) { /* last first: installing r undoes s, even */
    tl_tab *old = aside[i].fields; /* when s names a shared local twice */
    r->e[s->n - 1 - i].sl = s->e[i].sl;
    r->e[s->n - 1 - i].fields = old;
    if (old != NULL) tl_tab_disown(old);
  }
  tl_snap_tidy(t, aside, s->n);
  tl_free(aside);
  tl_free(s);
  *replaced = r;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* C API                                                                  */
/* ---------------------------------------------------------------------- */

/* Sets *out to every shared local the calling thread has fields of, and *n
** to their count.  The caller frees the array.  It walks t's own map, not
** the registry.  Returns 0, or -1 when out of memory. */
static int tl_reg_withfields(const tl_thread *t, threadlocal_shared ***out, size_t *n) {
  threadlocal_shared **v = (threadlocal_shared **)tl_calloc(t->shcount + 1u, sizeof *v);
  uint32_t i;
  size_t k = 0;
  if (v == NULL) return -1;
  for (i = 0; i <= t->shmask; i++)
    if (t->shmap[i].fields != NULL) v[k++] = t->shmap[i].sl;
  *out = v;
  *n = k;
  return 0;
}

THREADLOCAL_API int threadlocal_snapshot_capture(threadlocal_shared *const *locals, size_t n,
                                                 threadlocal_snapshot **out) {
  tl_thread *t;
  threadlocal_shared **all = NULL;
  tl_snap *s;
  size_t i;
  if (out == NULL || (n > 0 && locals == NULL)) return THREADLOCAL_ERRARG;
  for (i = 0; i < n; i++)
    if (locals[i] == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
  if (n == 0) {
    if (tl_reg_withfields(t, &all, &n) != 0) return THREADLOCAL_ERRMEM;
    locals = all;
  }
  if ((s = tl_snap_new(n)) != NULL)
    for (i = 0; i < n; i++) {
      const tl_tab *f = tl_shfields_peek(t, locals[i]);
      s->e[i].sl = locals[i];
      if (f != NULL && tl_tab_clone(f, NULL, 0, &s->e[i].fields) != TL_COPY_OK) {
        tl_snap_free(s);
        s = NULL;
        break;
      }
    }
  tl_free(all);
  if (s == NULL) return THREADLOCAL_ERRMEM;
  *out = s;
  return THREADLOCAL_OK;
}

THREADLOCAL_API int threadlocal_snapshot_install(threadlocal_snapshot *snap,
                                                 threadlocal_snapshot **replaced) {
  tl_thread *t;
  if (snap == NULL || replaced == NULL) return THREADLOCAL_ERRARG;
  if (tl_init() != 0 || (t = tl_thread_get()) == NULL) return THREADLOCAL_ERRMEM;
  return tl_snap_install(t, snap, replaced) == 0 ? THREADLOCAL_OK : THREADLOCAL_ERRMEM;
}

THREADLOCAL_API void threadlocal_snapshot_free(threadlocal_snapshot *snap) {
  tl_snap_free(snap);
}
