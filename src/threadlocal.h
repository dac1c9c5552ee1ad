/*
** threadlocal.h: everything threadlocal exports, in one place.
**
** The module gives Lua states, and the C hosts that embed them, data
** private to the calling OS thread.  This header is the reference for C.
**
** Opening the module
**   On Lua 5.2 to 5.4, a host linking the module calls
**       luaL_requiref(L, "threadlocal", luaopen_threadlocal, 0);
**       lua_pop(L, 1);
**   Lua 5.1 and LuaJIT have no luaL_requiref.  There, store
**   luaopen_threadlocal in package.preload["threadlocal"].  Or call it with
**   lua_call and store its table in package.loaded["threadlocal"] and, if
**   wanted, in the global threadlocal.
**   A host may instead let `require "threadlocal"` find threadlocal.so on
**   package.cpath.  The first open pins the shared object that holds the
**   module.  It stays mapped until the process ends, even after lua_close of
**   every state.
**
** Linking
**   Link the module's object (src/threadlocal.c compiled) or libthreadlocal.a,
**   plus -lpthread -ldl.  The module links no Lua library: the host brings
**   its own.  Or take the flags from
**   `pkg-config --cflags --libs threadlocal`.
**
** Shared locals from C
**   A shared local is process-wide and found by name.  Every state and the
**   C API see the same one.  Each OS thread has its own fields in it.  A
**   threadlocal_shared * is never freed.  It is valid for the life of the
**   process and usable from any thread.  Every function below acts on the
**   calling thread's fields only.  None takes a global lock, except
**   threadlocal_shared_open.  Any may be called before a Lua state exists.
**
**   The calls below this note take NUL-terminated string keys, which Lua
**   sees as string keys.  "Reading and writing any value", further down,
**   takes any key kind and reaches nested tables.  Values are copied in:
**   nil, booleans, 64-bit integers, doubles, strings and pointers.  Strings
**   have a length and are binary-safe.  set_boolean stores true for any
**   non-zero value.  Lua reads a pointer as a light userdata.  Names and
**   strings are at most THREADLOCAL_MAXLEN bytes.  NULL with length 0 is the
**   empty name or string.
**
**   A pointer may carry a destructor, which runs exactly once, on the owning
**   thread.  It runs when the field is overwritten or deleted, from C or
**   Lua.  It also runs when the thread's fields are cleared or released, or
**   while the thread exits.  Overwriting runs the old value's destructor even
**   when the new pointer is the same.  So setting a pointer again with its
**   destructor stores a pointer that destructor has just been given.  A NULL
**   pointer may carry a destructor too; it is called with NULL.  A destructor
**   may call back into this API: the fields are consistent when it runs.
**   During the thread's exit, such a call starts a fresh record.  The next
**   round of thread-exit destructors frees it.  A copy of the pointer (a Lua
**   read, a table copy) never carries the destructor.
**
**   Functions return THREADLOCAL_OK or an error code; an error changes
**   nothing.  THREADLOCAL_ERRMEM is out of memory; a destructor passed in
**   was not called.  THREADLOCAL_ERRARG is a NULL or otherwise bad argument,
**   or a call that cannot be made now.  The calls on nodes add the codes
**   listed with them.  threadlocal_strerror names any code.
**
**   Example, in C:
**       threadlocal_shared *ctx;
**       if (threadlocal_shared_open_cstr("ctx", &ctx) == THREADLOCAL_OK)
**         threadlocal_set_integer(ctx, "worker", 3);
**   Then Lua on the same thread reads it:
**       print(threadlocal.shared("ctx").worker)   --> 3
*/
#ifndef THREADLOCAL_H
#define THREADLOCAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define THREADLOCAL_VERSION_MAJOR 0
#define THREADLOCAL_VERSION_MINOR 4
#define THREADLOCAL_VERSION_PATCH 0

#define THREADLOCAL_STR_(x) #x
#define THREADLOCAL_STR(x) THREADLOCAL_STR_(x)
#define THREADLOCAL_VERSION                       \
  THREADLOCAL_STR(THREADLOCAL_VERSION_MAJOR) "."  \
  THREADLOCAL_STR(THREADLOCAL_VERSION_MINOR) "."  \
  THREADLOCAL_STR(THREADLOCAL_VERSION_PATCH)

/* Metatable names, which are also the type names in error messages. */
#define THREADLOCAL_LOCAL_MT "threadlocal.local"   /* threadlocal.new */
#define THREADLOCAL_SHARED_MT "threadlocal.shared" /* threadlocal.shared */
#define THREADLOCAL_PROXY_MT "threadlocal.proxy"   /* proxy of a shared table */
/* Deprecated: the old name of THREADLOCAL_PROXY_MT, which it now equals. */
#define THREADLOCAL_TABLE_MT THREADLOCAL_PROXY_MT

#ifndef THREADLOCAL_API
#define THREADLOCAL_API extern
#endif

/* The longest name of a shared local, and the longest string value, in
** bytes.  A longer length is a bad argument (THREADLOCAL_ERRARG). */
#define THREADLOCAL_MAXLEN (SIZE_MAX / 2)

/* Return codes.  Nothing changed when a call returns anything but OK. */
#define THREADLOCAL_OK 0
#define THREADLOCAL_ERRMEM 1      /* out of memory */
#define THREADLOCAL_ERRARG 2      /* a NULL or otherwise bad argument */
#define THREADLOCAL_ERRSTALE 3    /* the node's table was replaced, deleted or cleared,
                                  ** or the table changed during an iteration */
#define THREADLOCAL_ERRTHREAD 4   /* the node or iteration belongs to another thread */
#define THREADLOCAL_ERRTYPE 5     /* a key on the path holds no table */
#define THREADLOCAL_ERRDEPTH 6    /* a table would nest deeper than THREADLOCAL_MAXDEPTH */
#define THREADLOCAL_ERRDEFAULTS 7 /* the shared local already has other defaults */

/* How deep tables nest below a thread's fields (depth 0), from Lua and C.
** A table at depth THREADLOCAL_MAXDEPTH holds no table. */
#define THREADLOCAL_MAXDEPTH 100

typedef struct threadlocal_shared threadlocal_shared;

typedef enum threadlocal_type {
  THREADLOCAL_NIL,
  THREADLOCAL_BOOLEAN,
  THREADLOCAL_INTEGER,
  THREADLOCAL_FLOAT,
  THREADLOCAL_STRING,
  THREADLOCAL_POINTER,
  THREADLOCAL_TABLE /* read it through a node: threadlocal_node_child */
} threadlocal_type;

typedef struct threadlocal_value {
  threadlocal_type type;
  union {
    int boolean;
    int64_t integer;
    double number;
    struct {
      const char *ptr; /* NUL-terminated too; valid until the field changes */
      size_t len;
    } string;
    void *pointer;
  } u;
} threadlocal_value;

/* Opens the module in a state: pushes the module table.  (lua_State is
** declared by lua.h, which this header does not need to include.) */
struct lua_State;
THREADLOCAL_API int luaopen_threadlocal(struct lua_State *L);

/* Opens the companion module threadlocal.context (coroutine context
** variables), built into the module; luaopen_threadlocal also registers it
** in package.preload. */
THREADLOCAL_API int luaopen_threadlocal_context(struct lua_State *L);

/* Finds or creates the shared local called name[0..len) (binary-safe). */
THREADLOCAL_API int threadlocal_shared_open(const char *name, size_t len,
                                            threadlocal_shared **out);

/* The same, for a NUL-terminated name: threadlocal_shared_open(name,
** strlen(name), out).  NULL is a bad argument (THREADLOCAL_ERRARG). */
THREADLOCAL_API int threadlocal_shared_open_cstr(const char *name, threadlocal_shared **out);

/* Sets a field of the calling thread.  set_nil deletes, like delete. */
THREADLOCAL_API int threadlocal_set_nil(threadlocal_shared *sh, const char *key);
THREADLOCAL_API int threadlocal_set_boolean(threadlocal_shared *sh, const char *key,
                                            int value);
THREADLOCAL_API int threadlocal_set_integer(threadlocal_shared *sh, const char *key,
                                            int64_t value);
THREADLOCAL_API int threadlocal_set_float(threadlocal_shared *sh, const char *key,
                                          double value);
THREADLOCAL_API int threadlocal_set_string(threadlocal_shared *sh, const char *key,
                                           const char *s, size_t len);
THREADLOCAL_API int threadlocal_set_pointer(threadlocal_shared *sh, const char *key,
                                            void *p, void (*destructor)(void *));

/* Reads a field of the calling thread; an absent field reads as NIL. */
THREADLOCAL_API int threadlocal_get(threadlocal_shared *sh, const char *key,
                                    threadlocal_value *out);

THREADLOCAL_API int threadlocal_delete(threadlocal_shared *sh, const char *key);

/* Deletes every field of the calling thread in one shared local.  The next
** access starts again from the local's defaults. */
THREADLOCAL_API int threadlocal_clear(threadlocal_shared *sh);

/*
** Releases all the calling thread's data now, as if it had exited.  Its
** shared fields are freed (destructors run).  Its Local values become
** garbage of their states.  The thread gets a new id on its next use.  For
** hosts that reuse threads across unrelated jobs.  Called from within a
** Local's init on this thread, it does nothing and returns THREADLOCAL_ERRARG.
*/
THREADLOCAL_API int threadlocal_release(void);

/*
** Reading and writing any value
**
** Keys.  Every call below takes its keys as threadlocal_value.  A key is a
** BOOLEAN, an INTEGER, a FLOAT or a STRING.  A STRING is u.string.ptr with
** u.string.len bytes, binary-safe; ptr is NULL only with length 0.  A FLOAT
** with an integer value is that INTEGER key, as in Lua: 2.0 and 2 are one
** key.  A NaN, a string longer than THREADLOCAL_MAXLEN, or any other type is
** a bad argument.  The inline helpers threadlocal_string(),
** threadlocal_integer(), ... make keys and values.  threadlocal_string()
** borrows its string.
**
** Nodes.  A threadlocal_node names a table the calling thread holds.  That
** is its fields of a shared local (a root node), or a table nested in them.
** A node is a small value to copy freely; it owns nothing and is never
** freed.  Its members are private.  It is not the table, nor a copy, but a
** checked position in the thread's own stored values.  A Lua proxy
** (THREADLOCAL_PROXY_MT) is the same in a state.
**   - A root node (threadlocal_root) stands for the fields of whichever
**     thread uses it, as the threadlocal_shared does: share it freely.
**   - A nested node (threadlocal_node_child, threadlocal_node_newtable)
**     belongs to the thread that made it.  It stays valid while its table
**     is not replaced, deleted or cleared, from C or Lua.  After that any
**     use returns THREADLOCAL_ERRSTALE.  On another thread, or after
**     threadlocal_release (the thread's new id), it returns
**     THREADLOCAL_ERRTHREAD.  A check never reads freed memory: a node names
**     a slot, not an address.
** A node with all bytes zero is a bad argument.
**
** Strings read (values and keys) point into the stored table.  They are
** NUL-terminated and valid until that table changes.  Pointers read carry
** no destructor.  Every call acts on the calling thread's own values, takes
** no lock, and changes nothing when it fails.
**
** Iteration.  threadlocal_node_iter starts a walk over one table's pairs.
** The walk follows the order in which the keys were first stored in that
** table.  A key deleted and stored again comes last.  A Lua pairs() walks
** the same order.  A thread's fields made from defaults start in the
** defaults' order.  Any write to the walked table ends the walk, from C or
** Lua, even one that stores an equal value.  The next threadlocal_next then
** returns THREADLOCAL_ERRSTALE.  Writes to tables nested in it do not.  To
** change the table while walking it, collect the keys first.
**
** Example, for a script that ran `req.headers = { host = "x" }`.  Get the
** root node:
**     threadlocal_node root;
**     threadlocal_root(req, &root);
** Then read req.headers.host:
**     threadlocal_value path[2], v;
**     path[0] = threadlocal_string("headers");
**     path[1] = threadlocal_string("host");
**     if (threadlocal_node_get(&root, path, 2, &v) == THREADLOCAL_OK &&
**         v.type == THREADLOCAL_STRING) puts(v.u.string.ptr);
*/
typedef struct threadlocal_node {
  threadlocal_shared *sh; /* private: a root's shared local, or NULL */
  uint64_t owner_id;         /* private: the thread's id */
  uint32_t slot, gen;     /* private: the table's slot in the thread's slab */
} threadlocal_node;

typedef struct threadlocal_iter {
  threadlocal_node node; /* private: the table walked */
  uint64_t version;      /* private: the table's version at the start */
  uint32_t next;         /* private: the next entry to look at */
  int empty;             /* private: a root that had no fields */
} threadlocal_iter;

/* Sets *out to the root node of sh: the fields of the thread using it.
** Returns OK, or ERRARG (sh or out NULL). */
THREADLOCAL_API int threadlocal_root(threadlocal_shared *sh, threadlocal_node *out);

/*
** Reads the value at a path of n keys below node, n from 1 to
** THREADLOCAL_MAXDEPTH + 1.  Key path[0] is looked up in node's table,
** path[1] in the table found there, and so on.  An absent key on the path reads as
** NIL.  A table reads as THREADLOCAL_TABLE, without its content:
** threadlocal_node_child gives its node.  Returns OK, ERRARG (NULL, a bad
** key, n out of range), ERRTYPE, ERRSTALE, ERRTHREAD or ERRMEM.  ERRTYPE: a
** key before the last holds neither a table nor nil.  ERRMEM: a root's
** first use makes the thread's fields from defaults.
*/
THREADLOCAL_API int threadlocal_node_get(const threadlocal_node *node,
                                         const threadlocal_value *path, size_t n,
                                         threadlocal_value *out);

/* Sets *out to the node of the table at a path of n keys below node, as
** threadlocal_node_get walks it.  Returns OK, ERRARG, ERRTYPE, ERRSTALE,
** ERRTHREAD or ERRMEM.  ERRTYPE: the value there or on the way is not a
** table, nil included. */
THREADLOCAL_API int threadlocal_node_child(const threadlocal_node *node,
                                           const threadlocal_value *path, size_t n,
                                           threadlocal_node *out);

/*
** Sets node's table[key] to a copy of *value.  NIL deletes.  A BOOLEAN is
** stored as true or false.  An INTEGER, FLOAT or POINTER (without
** destructor) is stored as is.  A STRING is copied: NULL only with length 0,
** at most THREADLOCAL_MAXLEN bytes.  A TABLE value is a bad argument: use
** threadlocal_node_newtable.  The old value's destructor, if any, runs after
** the store.  Returns OK, ERRARG, ERRSTALE, ERRTHREAD or ERRMEM.
*/
THREADLOCAL_API int threadlocal_node_set(const threadlocal_node *node,
                                         const threadlocal_value *key,
                                         const threadlocal_value *value);

/* As threadlocal_set_pointer, under any key of node's table.  The pointer
** p carries destructor (may be NULL), which runs once, on this thread, as
** described at the top.  On failure destructor is not called.  Returns as node_set. */
THREADLOCAL_API int threadlocal_node_set_pointer(const threadlocal_node *node,
                                                 const threadlocal_value *key, void *p,
                                                 void (*destructor)(void *));

/* Deletes node's table[key] (absent is fine).  Returns as node_set. */
THREADLOCAL_API int threadlocal_node_delete(const threadlocal_node *node,
                                            const threadlocal_value *key);

/*
** Sets node's table[key] to a new empty table.  If out is not NULL, sets
** *out to its node, to fill it.  The new table sits one level below node's;
** one below THREADLOCAL_MAXDEPTH returns ERRDEPTH.  The replaced value is
** freed, and a replaced table's nodes go stale.  Returns OK, ERRARG,
** ERRDEPTH, ERRSTALE, ERRTHREAD or ERRMEM.
*/
THREADLOCAL_API int threadlocal_node_newtable(const threadlocal_node *node,
                                              const threadlocal_value *key,
                                              threadlocal_node *out);

/* Starts a walk over node's table into *it (the caller's memory; nothing to
** free).  A root with no fields walks nothing.  Returns OK, ERRARG,
** ERRSTALE, ERRTHREAD, or ERRMEM (a root made from defaults). */
THREADLOCAL_API int threadlocal_node_iter(const threadlocal_node *node, threadlocal_iter *it);

/*
** Stores the walk's next pair in *key and *value (value may be NULL).  At
** the end key->type is THREADLOCAL_NIL, and stays so.  Only the thread that
** started the walk may go on.  Returns OK, ERRARG (NULL it or key), ERRSTALE (the
** table changed or went away: see Iteration) or ERRTHREAD.
*/
THREADLOCAL_API int threadlocal_next(threadlocal_iter *it, threadlocal_value *key,
                                     threadlocal_value *value);

/*
** Gives sh its defaults: a copy of the table that `from` names.  That is
** any node of the calling thread; a root with no fields gives empty
** defaults.  As in Lua, defaults are fixed once given.  A later call with
** equal content is fine; other content returns ERRDEFAULTS.  Each thread
** starts from a copy when it first uses sh.  Threads that hold fields of sh
** already keep theirs.  Pointers are copied without destructors.  Returns
** OK, ERRARG, ERRDEFAULTS, ERRSTALE, ERRTHREAD or ERRMEM.
*/
THREADLOCAL_API int threadlocal_set_defaults(threadlocal_shared *sh,
                                             const threadlocal_node *from);

/* A static English phrase for a return code, for logs ("unknown code" for
** a code this header does not list). */
THREADLOCAL_API const char *threadlocal_strerror(int code);

/* Keys and values, for the calls above (inline: not exported). */
static inline threadlocal_value threadlocal_lstring(const char *s, size_t len) {
  threadlocal_value v;
  memset(&v, 0, sizeof v);
  v.type = THREADLOCAL_STRING;
  v.u.string.ptr = s;
  v.u.string.len = len;
  return v;
}
static inline threadlocal_value threadlocal_string(const char *s) { /* s != NULL */
  return threadlocal_lstring(s, strlen(s));
}
static inline threadlocal_value threadlocal_integer(int64_t i) {
  threadlocal_value v;
  memset(&v, 0, sizeof v);
  v.type = THREADLOCAL_INTEGER;
  v.u.integer = i;
  return v;
}
static inline threadlocal_value threadlocal_float(double f) {
  threadlocal_value v;
  memset(&v, 0, sizeof v);
  v.type = THREADLOCAL_FLOAT;
  v.u.number = f;
  return v;
}
static inline threadlocal_value threadlocal_boolean(int b) {
  threadlocal_value v;
  memset(&v, 0, sizeof v);
  v.type = THREADLOCAL_BOOLEAN;
  v.u.boolean = b != 0;
  return v;
}
static inline threadlocal_value threadlocal_pointer(void *p) {
  threadlocal_value v;
  memset(&v, 0, sizeof v);
  v.type = THREADLOCAL_POINTER;
  v.u.pointer = p;
  return v;
}

/*
** Snapshots hand a thread's shared fields to another thread.  For example,
** a request's context moves from the accepting thread to the pool worker
** running its job.
**
** Capture (threadlocal_snapshot_capture) copies the calling thread's fields
** of the n shared locals in `locals` into a new snapshot.  With n == 0 it
** copies every shared local the thread has fields of.  A snapshot is plain
** data that belongs to no thread: any thread may install or free it.
** Pointers are copied without their destructors.
**
** Install (threadlocal_snapshot_install) moves the snapshot's fields in on
** the calling thread.  They replace its fields of those shared locals.  A
** shared local the snapshot holds no fields of is left with none.  In
** *replaced it hands back a snapshot of what it replaced, destructors and
** all.  On success `snap` is consumed: do not free it.  On error nothing
** changed and it is still the caller's.  Freeing the handed-back snapshot
** runs its destructors.  To restore a worker's own fields after the job:
**     threadlocal_snapshot *own, *job;
**     threadlocal_snapshot_install(snap, &own);    ... run the job ...
**     threadlocal_snapshot_install(own, &job);
**     threadlocal_snapshot_free(job);
**
** Free (threadlocal_snapshot_free) frees a snapshot; NULL is fine.  It runs
** the destructors of the pointers it holds.  Only a snapshot handed back by
** install holds any.
*/
typedef struct threadlocal_snapshot threadlocal_snapshot;
THREADLOCAL_API int threadlocal_snapshot_capture(threadlocal_shared *const *locals, size_t n,
                                                 threadlocal_snapshot **out);
THREADLOCAL_API int threadlocal_snapshot_install(threadlocal_snapshot *snap,
                                                 threadlocal_snapshot **replaced);
THREADLOCAL_API void threadlocal_snapshot_free(threadlocal_snapshot *snap);

/* The calling thread's id (>= 1, never reused); 0 when out of memory. */
THREADLOCAL_API uint64_t threadlocal_id(void);

/*
** Every allocation of the module goes through one function, like realloc.
** A call f(ud, NULL, n) allocates, f(ud, p, n) resizes, and f(ud, p, 0)
** frees and returns NULL.  Returning NULL for n > 0 means out of memory.
** The module reports that as an error, and survives.  Passing NULL for f
** restores malloc.
**
** The function is called from every thread at once, and from thread-exit
** hooks.  There the thread's other destructors may have run already.  So it
** must be thread-safe, and must not rely on the calling thread's own
** thread-local state.  Set it before the module is first used.  That is
** before the first luaopen_threadlocal and any other call of this header.
** Setting it later is not allowed: memory made by one allocator would be
** freed by the other.
*/
typedef void *(*threadlocal_alloc)(void *ud, void *ptr, size_t size);
THREADLOCAL_API void threadlocal_set_allocator(threadlocal_alloc f, void *ud);

#ifdef __cplusplus
}
#endif

#endif
