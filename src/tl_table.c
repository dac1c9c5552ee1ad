/*
** tl_table.c: the allocator hook, hashing, and the shared tables that hold
** a thread's values.  Part of threadlocal.c (core: no Lua, no locks).
*/
#ifndef TL_CORE_H
#error "compile threadlocal.c, which includes this file"
#endif

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

/* realloc of an array of n elements of `size` bytes; NULL on overflow. */
static void *tl_reallocarray(void *p, size_t n, size_t size) {
  return size != 0 && n > SIZE_MAX / size ? NULL : tl_realloc(p, n * size);
}

static void *tl_calloc(size_t n, size_t size) {
  void *p = size != 0 && n > SIZE_MAX / size ? NULL : tl_malloc(n * size);
  if (p != NULL) memset(p, 0, n * size);
  return p;
}

static void tl_free(void *p) {
  if (p != NULL) tl_allocf(tl_allocud, p, 0);
}

/* The bytes a string of len takes: len + 1 rounded up to 16, as malloc
** gives anyway.  So a string of the same size class can be overwritten
** in place.  0 for impossible lengths. */
static size_t tl_strcap(size_t len) {
  return len <= SIZE_MAX - 16 ? (len + 16) & ~(size_t)15 : 0;
}

/* A NUL-terminated copy of s[0..len); NULL when out of memory. */
static char *tl_strdup(const char *s, size_t len) {
  size_t cap = tl_strcap(len);
  char *p = cap != 0 ? (char *)tl_malloc(cap) : NULL;
  if (p == NULL) return NULL;
  if (len > 0) memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

THREADLOCAL_API void threadlocal_set_allocator(threadlocal_alloc f, void *ud) {
  tl_allocf = f != NULL ? f : tl_defalloc;
  tl_allocud = f != NULL ? ud : NULL;
}

/* ---------------------------------------------------------------------- */
/* Shared tables (plain C: no Lua, no locks)                              */
/* ---------------------------------------------------------------------- */

/*
** Hashing.  Keys may come from hostile scripts and hosts, so hashes are
** keyed with a per-process random seed (tl_seed_init, at set-up).  Without
** the seed, nobody can make many keys share a slot.  The mixing is
** wyhash's: a 64x64->128-bit multiply, folded.
*/
static uint64_t tl_seed[4] = { /* replaced by random bits before any use */
  0x2d358dccaa6c78a5u, 0x8bb84b93962eacc9u, 0x4b33a62ed433d4a3u, 0x4d5a2da51de1aa47u
};

#if defined(__SIZEOF_INT128__)
__extension__ typedef unsigned __int128 tl_u128;

static TL_HOT void tl_mum(uint64_t *a, uint64_t *b) { /* the two halves of a * b */
  tl_u128 r = (tl_u128)*a * *b;
  *a = (uint64_t)r;
  *b = (uint64_t)(r >> 64);
}
#else
static void tl_mum(uint64_t *a, uint64_t *b) {
  uint64_t ha = *a >> 32, hb = *b >> 32, la = (uint32_t)*a, lb = (uint32_t)*b;
  uint64_t rh = ha * hb, rm0 = ha * lb, rm1 = hb * la, rl = la * lb;
  uint64_t t = rl + (rm0 << 32), c = t < rl, lo = t + (rm1 << 32);
  c += lo < t;
  *a = lo;
  *b = rh + (rm0 >> 32) + (rm1 >> 32) + c;
}
#endif

static TL_HOT uint64_t tl_mix(uint64_t a, uint64_t b) {
  tl_mum(&a, &b);
  return a ^ b;
}

static TL_HOT uint64_t tl_rd8(const char *p) {
  uint64_t w;
  memcpy(&w, p, 8);
  return w;
}

static TL_HOT uint64_t tl_rd4(const char *p) {
  uint32_t w;
  memcpy(&w, p, 4);
  return w;
}

static uint32_t tl_hash_bytes(const char *s, size_t len) {
  uint64_t a, b, seed = tl_seed[0];
  if (len <= 16) {
    if (len >= 4) { /* two overlapping pairs of 4-byte words */
      size_t d = (len >> 3) << 2;
      a = (tl_rd4(s) << 32) | tl_rd4(s + d);
      b = (tl_rd4(s + len - 4) << 32) | tl_rd4(s + len - 4 - d);
    } else if (len > 0) {
      a = ((uint64_t)(unsigned char)s[0] << 16) | ((uint64_t)(unsigned char)s[len >> 1] << 8) |
          (unsigned char)s[len - 1];
      b = 0;
    } else
      a = b = 0;
  } else {
    size_t i = len;
    for (; i > 16; i -= 16, s += 16) seed = tl_mix(tl_rd8(s) ^ tl_seed[1], tl_rd8(s + 8) ^ seed);
    a = tl_rd8(s + i - 16);
    b = tl_rd8(s + i - 8);
  }
  a ^= tl_seed[1];
  b ^= seed;
  tl_mum(&a, &b);
  a = tl_mix(a ^ tl_seed[2] ^ (uint64_t)len, b ^ tl_seed[1]);
  return (uint32_t)(a ^ (a >> 32));
}

static uint32_t tl_hash_int(uint64_t x) {
  uint64_t h = tl_mix(x ^ tl_seed[2], tl_seed[3]);
  return (uint32_t)(h ^ (h >> 32));
}

/*
** Sets the seed from the system's random source: getrandom, else
** /dev/urandom, else (both unavailable) the clock, addresses and the pid.
** Called once, before any key is hashed.
*/
static void tl_seed_init(void) {
  uint64_t k[4];
  size_t got = 0, i;
#ifdef TL_GETRANDOM
  ssize_t n = getrandom(k, sizeof k, GRND_NONBLOCK);
  if (n > 0) got = (size_t)n;
#endif
  if (got < sizeof k) {
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ssize_t r;
      while (got < sizeof k && (r = read(fd, (char *)k + got, sizeof k - got)) > 0)
        got += (size_t)r;
      close(fd);
    }
  }
  if (got < sizeof k) {
    struct timespec ts;
    uint64_t x;
    clock_gettime(CLOCK_REALTIME, &ts);
    x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    memset(k, 0, sizeof k);
    k[0] = x ^ (uint64_t)getpid();
    k[1] = (uint64_t)(uintptr_t)&k ^ (uint64_t)(uintptr_t)&tl_seed_init;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    k[2] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
    k[3] = (uint64_t)(uintptr_t)k ^ x;
  }
  for (i = 0; i < 4; i++)
    tl_seed[i] = tl_mix(tl_seed[i] ^ k[i], tl_seed[(i + 1) & 3] ^ k[(i + 2) & 3]) ^ k[i];
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

/* Whether f has an exact int64 value, stored in *out. */
static int tl_dbl_toint(double f, int64_t *out) {
  if (f >= -9223372036854775808.0 && f < 9223372036854775808.0 && (double)(int64_t)f == f) {
    *out = (int64_t)f;
    return 1;
  }
  return 0;
}

/* A float key: one with an integer value is that integer, as in Lua. */
static void tl_key_float(tl_key *k, double f) {
  int64_t i;
  if (tl_dbl_toint(f, &i))
    tl_key_int(k, i);
  else {
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

/* The length of a TL_TSHORT key. */
static TL_HOT size_t tl_shortlen(const tl_u *u) {
  return TL_SHORTKEY - (size_t)(unsigned char)u->c[TL_SHORTKEY];
}

static void tl_key_of(tl_key *k, const tl_val *v) { /* v is a key taken from an entry */
  switch (v->type) {
    case TL_TSHORT: tl_key_str(k, v->u.c, tl_shortlen(&v->u)); break;
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

/* The key of e as a key to look up (a string is borrowed from e). */
static void tl_entry_key(tl_key *k, const tl_entry *e) {
  k->type = e->ktype;
  switch (e->ktype) {
    case TL_TSHORT:
      k->type = TL_TSTR;
      k->u.str.s = e->key.c;
      k->u.str.len = tl_shortlen(&e->key);
      break;
    case TL_TSTR:
      k->u.str.s = e->key.str.s;
      k->u.str.len = e->key.str.len;
      break;
    case TL_TINT: k->u.i = e->key.i; break;
    case TL_TFLOAT: k->u.f = e->key.f; break;
    default: k->u.b = e->key.b; break;
  }
  k->hash = e->hash;
}

/* Moves the key of e, a live entry of a table about to be freed, to *out. */
static void tl_entry_takekey(tl_entry *e, tl_val *out) {
  out->type = e->ktype;
  out->u = e->key;
  e->ktype = TL_TNIL;
}

/* e->val = *v, member by member: see tl_entry. */
static TL_HOT void tl_entry_setval(tl_entry *e, const tl_val *v) {
  e->val.u = v->u;
  e->val.type = v->type;
}

/* Whether e's key is the string s[0..len). */
static TL_HOT int tl_entry_streq(const tl_entry *e, const char *s, size_t len) {
  if (len <= TL_SHORTKEY)
    return e->ktype == TL_TSHORT && tl_shortlen(&e->key) == len && tl_memeq(e->key.c, s, len);
  return e->ktype == TL_TSTR && e->key.str.len == len && tl_memeq(e->key.str.s, s, len);
}

static int tl_key_eq(const tl_entry *e, const tl_key *k) {
  switch (k->type) {
    case TL_TSTR: return tl_entry_streq(e, k->u.str.s, k->u.str.len);
    case TL_TINT: return e->ktype == TL_TINT && e->key.i == k->u.i;
    case TL_TFLOAT: return e->ktype == TL_TFLOAT && e->key.f == k->u.f;
    default: return e->ktype == TL_TBOOL && e->key.b == k->u.b;
  }
}

/* The bytes of one slot of an index of mask + 1 slots. */
static size_t tl_ix_width(uint32_t mask) {
  return mask < 256 ? 1 : mask < 65536 ? 2 : 4;
}

/* Slot i of t's index: an entry number + 1, or 0. */
static TL_HOT uint32_t tl_ix_get(const tl_tab *t, uint32_t i) {
  if (t->ixmask < 256) return ((const uint8_t *)t->ix)[i];
  if (t->ixmask < 65536) return ((const uint16_t *)t->ix)[i];
  return ((const uint32_t *)t->ix)[i];
}

/* Puts entry number n in the first free slot of t's index for hash h. */
static void tl_ix_add(tl_tab *t, uint32_t h, uint32_t n) {
  uint32_t i = h & t->ixmask;
  while (tl_ix_get(t, i) != 0) {
    TL_STAT(tl_stat_probes++);
    i = (i + 1) & t->ixmask;
  }
  if (t->ixmask < 256)
    ((uint8_t *)t->ix)[i] = (uint8_t)(n + 1);
  else if (t->ixmask < 65536)
    ((uint16_t *)t->ix)[i] = (uint16_t)(n + 1);
  else
    ((uint32_t *)t->ix)[i] = n + 1;
}

static tl_entry *tl_tab_find(const tl_tab *t, const tl_key *k) {
  uint32_t i, n;
  if (t->ix == NULL) { /* a small table: in order */
    for (i = 0; i < t->used; i++) {
      tl_entry *e = &t->e[i];
      TL_STAT(tl_stat_probes++);
      if (e->hash == k->hash && e->status == TL_LIVE && tl_key_eq(e, k)) return e;
    }
    return NULL;
  }
  for (i = k->hash & t->ixmask;; i = (i + 1) & t->ixmask) {
    tl_entry *e;
    TL_STAT(tl_stat_probes++);
    if ((n = tl_ix_get(t, i)) == 0) return NULL;
    e = &t->e[n - 1];
    if (e->hash == k->hash && e->status == TL_LIVE && tl_key_eq(e, k)) return e;
  }
}

/* Finds the key s[0..len), a string from Lua, through the address cache. */
static TL_HOT tl_entry *tl_tab_findstr(tl_tab *t, const char *s, size_t len) {
  uint32_t c = (uint32_t)((uintptr_t)s >> 4) & (TL_KCACHE - 1);
  tl_entry *e;
  tl_key k;
  if (t->kaddr[c] == s) {
    e = &t->e[t->kentry[c]];
    if (e->status == TL_LIVE && tl_entry_streq(e, s, len)) return e;
  }
  tl_key_str(&k, s, len);
  if ((e = tl_tab_find(t, &k)) != NULL) {
    t->kaddr[c] = s;
    t->kentry[c] = (uint32_t)(e - t->e);
  }
  return e;
}

/* Makes room for `need` more slots past nslab in t's slab (see tl_thread).
** Returns 0, or -1 when out of memory. */
static int tl_slab_grow(tl_thread *t, uint32_t need) {
  uint32_t cap = t->capslab ? t->capslab : 16, *gen, *freeslots;
  tl_tab **slab;
  while (cap - t->nslab < need) {
    if (cap > UINT32_MAX / 2) return -1;
    cap *= 2;
  }
  if (cap == t->capslab) return 0;
  if ((slab = (tl_tab **)tl_reallocarray(t->slab, cap, sizeof *slab)) == NULL) return -1;
  t->slab = slab;
  if ((gen = (uint32_t *)tl_reallocarray(t->slabgen, cap, sizeof *gen)) == NULL) return -1;
  t->slabgen = gen;
  if ((freeslots = (uint32_t *)tl_reallocarray(t->slabfree, cap, sizeof *freeslots)) == NULL)
    return -1;
  t->slabfree = freeslots;
  memset(gen + t->capslab, 0, (cap - t->capslab) * sizeof *gen);
  t->capslab = cap;
  return 0;
}

static int tl_slab_add(tl_thread *t, tl_tab *tab) {
  uint32_t i;
  if (t->nslabfree > 0)
    i = t->slabfree[--t->nslabfree];
  else {
    if (t->nslab == t->capslab && tl_slab_grow(t, 1) != 0) return -1;
    i = t->nslab++;
  }
  t->slab[i] = tab;
  tab->slot = i;
  return 0;
}

static void tl_slab_remove(tl_thread *t, tl_tab *tab) {
  t->slab[tab->slot] = NULL;
  t->slabgen[tab->slot]++;
  t->slabfree[t->nslabfree++] = tab->slot;
}

/* A new empty table owned by t (NULL: in no slab), `depth` levels below
** the fields table.  The caller checks the depth limit. */
static tl_tab *tl_tab_new(tl_thread *owner, uint32_t depth) {
  tl_tab *tab = (tl_tab *)tl_calloc(1, sizeof *tab);
  if (tab == NULL) return NULL;
  tab->owner = owner;
  tab->depth = depth;
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

/* Frees what e's key owns. */
static void tl_entry_freekey(tl_entry *e) {
  if (e->ktype == TL_TSTR) tl_free(e->key.str.s);
  e->ktype = TL_TNIL;
}

static void tl_tab_free(tl_tab *tab) {
  uint32_t i;
  if (tab->owner != NULL) tl_slab_remove(tab->owner, tab);
  for (i = 0; i < tab->used; i++) {
    tl_entry *e = &tab->e[i];
    if (e->status == TL_LIVE) {
      tl_entry_freekey(e);
      tl_val_free(&e->val);
    }
  }
  tl_free(tab->ix);
  tl_free(tab->e);
  tl_free(tab);
}

#define TL_MAXCAP ((uint32_t)1 << 30) /* entries in one table */

/* The index slots for cap entries: a power of 2 above 1.5 cap, so that
** probes stay short.  None (0) up to TL_LINEAR. */
static uint32_t tl_ix_size(uint32_t cap) {
  uint32_t n = 16;
  if (cap <= TL_LINEAR) return 0;
  while (n <= cap + cap / 2) n *= 2;
  return n;
}

/*
** Rebuilds t with room for cap entries (at least t->count).  The live
** entries move to the front of e[], in order; the index is made again.
** Returns 0, or -1 when out of memory (then nothing changed).
*/
static int tl_tab_resize(tl_tab *t, uint32_t cap) {
  uint32_t nix = tl_ix_size(cap), i, j;
  void *ix = t->ix;
  tl_entry *ne;
  if (nix != (t->ix != NULL ? t->ixmask + 1 : 0)) { /* a new index */
    ix = NULL;
    if (nix > 0 && (ix = tl_reallocarray(NULL, nix, tl_ix_width(nix - 1))) == NULL) return -1;
  }
  if (cap > t->cap) {
    if ((ne = (tl_entry *)tl_reallocarray(t->e, cap, sizeof *ne)) == NULL) {
      if (ix != t->ix) tl_free(ix);
      return -1;
    }
    memset(ne + t->cap, 0, (cap - t->cap) * sizeof *ne);
    t->e = ne;
    t->cap = cap;
  }
  TL_STAT(tl_stat_rehashes++);
  for (i = j = 0; i < t->used; i++) { /* compact */
    if (t->e[i].status != TL_LIVE) continue;
    TL_STAT(tl_stat_moved++);
    if (i != j) t->e[j] = t->e[i];
    j++;
  }
  memset(t->e + j, 0, (t->used - j) * sizeof *t->e);
  t->used = j;
  memset(t->kaddr, 0, sizeof t->kaddr);
  if (cap < t->cap) { /* smaller: a failure leaves the larger block in use */
    if ((ne = (tl_entry *)tl_realloc(t->e, (size_t)cap * sizeof *ne)) != NULL) t->e = ne;
    t->cap = cap;
  }
  if (ix != t->ix) {
    tl_free(t->ix);
    t->ix = ix;
    t->ixmask = nix > 0 ? nix - 1 : 0;
  }
  if (t->ix != NULL) {
    memset(t->ix, 0, ((size_t)t->ixmask + 1) * tl_ix_width(t->ixmask));
    for (i = 0; i < t->used; i++) tl_ix_add(t, t->e[i].hash, i);
  }
  return 0;
}

/*
** Makes room for one more entry at e[used]; 0, or -1 when out of memory.
** A full e[] is rebuilt with room for 1.5 times the live entries.  When
** deletes left an eighth of e[] dead, it gets room for twice them.  So a
** third of e[] is free after a rebuild, and any mix of inserts and
** deletes costs amortised O(1).  The table may shrink.
*/
static int tl_tab_reserve(tl_tab *t) {
  uint64_t cap;
  if (t->used < t->cap) return 0;
  cap = (uint64_t)t->count + (t->used - t->count >= t->used / 8 ? t->count : t->count / 2);
  if (cap == t->count) cap++;
  if (cap > TL_MAXCAP) {
    if (t->count >= TL_MAXCAP) return -1;
    cap = TL_MAXCAP;
  }
  return tl_tab_resize(t, (uint32_t)cap);
}

/*
** t[k] = *v, moving v in (nil deletes).  The old value goes to *old.  The
** caller frees it once the table is consistent: a destructor may call
** back in.  Returns 0, or -1 when out of memory (then nothing changed and
** v still belongs to the caller).
*/
static int tl_tab_put(tl_tab *t, const tl_key *k, tl_val *v, tl_val *old) {
  tl_entry *e = tl_tab_find(t, k);
  old->type = TL_TNIL;
  if (t->owner != NULL) t->version = t->owner->clock++;
  if (e != NULL) {
    old->u = e->val.u;
    old->type = e->val.type;
    if (v->type == TL_TNIL) { /* delete */
      tl_entry_freekey(e);
      e->status = TL_DEAD;
      t->count--;
    } else
      tl_entry_setval(e, v);
    return 0;
  }
  if (v->type == TL_TNIL) return 0;
  if (tl_tab_reserve(t) != 0) return -1;
  e = &t->e[t->used];
  switch (k->type) {
    case TL_TSTR:
      if (k->u.str.len <= TL_SHORTKEY) {
        memset(e->key.c, 0, sizeof e->key.c);
        memcpy(e->key.c, k->u.str.s, k->u.str.len);
        e->key.c[TL_SHORTKEY] = (char)(TL_SHORTKEY - k->u.str.len);
        e->ktype = TL_TSHORT;
        break;
      }
      if ((e->key.str.s = tl_strdup(k->u.str.s, k->u.str.len)) == NULL) return -1;
      e->key.str.len = k->u.str.len;
      e->ktype = TL_TSTR;
      break;
    case TL_TINT: e->key.i = k->u.i; e->ktype = TL_TINT; break;
    case TL_TFLOAT: e->key.f = k->u.f; e->ktype = TL_TFLOAT; break;
    default: e->key.b = k->u.b; e->ktype = TL_TBOOL; break;
  }
  tl_entry_setval(e, v);
  e->hash = k->hash;
  e->status = TL_LIVE;
  if (t->ix != NULL) tl_ix_add(t, k->hash, t->used);
  t->used++;
  t->count++;
  return 0;
}

/* What a copy returns. */
enum { TL_COPY_OK, TL_COPY_NOMEM, TL_COPY_DEEP };

static int tl_val_clone(const tl_val *src, tl_val *dst, tl_thread *owner, uint32_t depth);

/*
** A deep copy of src owned by `owner`, put `depth` levels below the fields
** table, in *out.  Returns TL_COPY_OK; TL_COPY_DEEP when a table of the
** copy would be deeper than TL_MAXDEPTH; TL_COPY_NOMEM when out of memory.
** src obeys the limit at its own depth, so the recursion is bounded.
*/
static int tl_tab_clone(const tl_tab *src, tl_thread *owner, uint32_t depth, tl_tab **out) {
  tl_tab *t;
  uint32_t i;
  int rc = TL_COPY_NOMEM;
  if (depth > TL_MAXDEPTH) return TL_COPY_DEEP;
  if ((t = tl_tab_new(owner, depth)) == NULL) return TL_COPY_NOMEM;
  if (src->count > 0 && tl_tab_resize(t, src->count) != 0) goto fail; /* just the room */
  for (i = 0; i < src->used; i++) {
    const tl_entry *e = &src->e[i];
    tl_key k;
    tl_val v, old;
    if (e->status != TL_LIVE) continue;
    tl_entry_key(&k, e);
    if ((rc = tl_val_clone(&e->val, &v, owner, depth + 1)) != TL_COPY_OK) goto fail;
    if (tl_tab_put(t, &k, &v, &old) != 0) {
      tl_val_free(&v);
      rc = TL_COPY_NOMEM;
      goto fail;
    }
  }
  *out = t;
  return TL_COPY_OK;
fail:
  tl_tab_free(t);
  return rc;
}

/* A copy never takes a pointer's destructor: only the original runs it.
** A table value is put `depth` levels down.  Returns as tl_tab_clone. */
static int tl_val_clone(const tl_val *src, tl_val *dst, tl_thread *owner, uint32_t depth) {
  *dst = *src;
  switch (src->type) {
    case TL_TSTR:
      if ((dst->u.str.s = tl_strdup(src->u.str.s, src->u.str.len)) == NULL)
        return TL_COPY_NOMEM;
      break;
    case TL_TPTR: dst->u.ptr.dtor = NULL; break;
    case TL_TTAB: return tl_tab_clone(src->u.tab, owner, depth, &dst->u.tab);
  }
  return TL_COPY_OK;
}

static int tl_tab_equal(const tl_tab *a, const tl_tab *b);

static int tl_val_equal(const tl_val *a, const tl_val *b) {
  if (a->type != b->type) return 0;
  switch (a->type) {
    case TL_TNIL: return 1;
    case TL_TBOOL: return a->u.b == b->u.b;
    case TL_TINT: return a->u.i == b->u.i;
    case TL_TFLOAT: return a->u.f == b->u.f || (a->u.f != a->u.f && b->u.f != b->u.f); /* NaN */
    case TL_TSTR:
      return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case TL_TPTR: return a->u.ptr.p == b->u.ptr.p;
    default: return tl_tab_equal(a->u.tab, b->u.tab);
  }
}

static int tl_tab_equal(const tl_tab *a, const tl_tab *b) {
  uint32_t i;
  if (a->count != b->count) return 0;
  for (i = 0; i < a->used; i++) {
    const tl_entry *e = &a->e[i], *f;
    tl_key k;
    if (e->status != TL_LIVE) continue;
    tl_entry_key(&k, e);
    if ((f = tl_tab_find(b, &k)) == NULL || !tl_val_equal(&e->val, &f->val)) return 0;
  }
  return 1;
}
