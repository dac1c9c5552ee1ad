/*
** tl_registry.c: the registry of shared locals by name, process-wide and
** never shrinking.  Part of threadlocal.c (core: no Lua).
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

/* Chained buckets under tl_reg_lock, which fork also takes. */
static pthread_mutex_t tl_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static threadlocal_shared **tl_reg;
static uint32_t tl_reg_cap, tl_reg_count;

#define TL_MAXSLOCS ((uint32_t)1 << 30) /* shared locals: their indexes double in uint32_t */

/* Finds or creates; NULL when out of memory.  Takes the registry lock.
** len <= THREADLOCAL_MAXLEN, so that no size below overflows. */
static threadlocal_shared *tl_reg_open(const char *name, size_t len) {
  uint32_t h = tl_hash_bytes(name, len);
  threadlocal_shared *sl;
  pthread_mutex_lock(&tl_reg_lock);
  if (tl_reg_cap > 0)
    for (sl = tl_reg[h & (tl_reg_cap - 1)]; sl != NULL; sl = sl->next, TL_STAT(tl_stat_probes++))
      if (sl->hash == h && sl->len == len && memcmp(sl->name, name, len) == 0) goto done;
  if (tl_reg_count == tl_reg_cap) { /* grow the buckets */
    uint32_t cap = tl_reg_cap ? 2 * tl_reg_cap : 16, i;
    threadlocal_shared **nb = tl_reg_count < TL_MAXSLOCS ? (threadlocal_shared **)tl_calloc(cap, sizeof *nb) : NULL;
    if (nb == NULL) {
      sl = NULL;
      goto done;
    }
    for (i = 0; i < tl_reg_cap; i++)
      while ((sl = tl_reg[i]) != NULL) {
        tl_reg[i] = sl->next;
        sl->next = nb[sl->hash & (cap - 1)];
        nb[sl->hash & (cap - 1)] = sl;
      }
    tl_free(tl_reg);
    tl_reg = nb;
    tl_reg_cap = cap;
  }
  if ((sl = (threadlocal_shared *)tl_malloc(sizeof *sl + len + 1)) != NULL) {
    sl->idx = tl_reg_count++;
    sl->hash = h;
    atomic_init(&sl->defaults, NULL);
    sl->len = len;
    memcpy(sl->name, name, len);
    sl->name[len] = '\0';
    sl->next = tl_reg[h & (tl_reg_cap - 1)];
    tl_reg[h & (tl_reg_cap - 1)] = sl;
  }
done:
  pthread_mutex_unlock(&tl_reg_lock);
  return sl;
}

/*
** Gives sl its defaults, which it keeps for good; tab is consumed.
** Returns 0 when sl now has them, given here or equal ones before.
** Returns 1 when sl already had other defaults.
*/
static int tl_reg_setdefaults(threadlocal_shared *sl, tl_tab *tab) {
  tl_tab *current = NULL;
  int same;
  if (atomic_compare_exchange_strong(&sl->defaults, &current, tab)) return 0;
  same = tl_tab_equal(current, tab);
  tl_tab_free(tab);
  return same ? 0 : 1;
}
