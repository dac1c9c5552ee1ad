/*
** threadlocal.h: everything threadlocal exports, in one place.
**
** threadlocal gives Lua states and the C hosts that embed them data private
** to the calling OS thread.  This header is the reference for C users; see
** README.md for the Lua API and the value rules.
**
** Opening the module
**   A host that links the module in makes it available to a state with
**       luaL_requiref(L, "threadlocal", luaopen_threadlocal, 0);
**       lua_pop(L, 1);
**   or lets `require "threadlocal"` find threadlocal.so on package.cpath.
**   The first open pins the shared object that contains the module: it stays
**   mapped until the process ends, even after lua_close of every state.
**
** Shared locals from C
**   A shared local is process-wide and found by name; every state and the C
**   API see the same one.  Each OS thread has its own fields in it.  Every
**   function below acts on the fields of the calling thread only, takes no
**   global lock (except threadlocal_shared_open, which may), and may be
**   called before any Lua state exists.
**
**   Keys are NUL-terminated strings; Lua sees them as string keys.  Values
**   are copied in: nil, booleans (set_boolean stores true for any non-zero
**   value), 64-bit integers, doubles, strings with a length (binary-safe),
**   and pointers.  Names and strings are at most THREADLOCAL_MAXLEN bytes;
**   NULL with length 0 is the empty name or string.  Lua reads a pointer as
**   a light userdata.
**
**   A pointer may carry a destructor, which runs exactly once, on the owning
**   thread: when the field is overwritten or deleted (from C or Lua), when
**   the thread's fields are cleared or released, or while the thread exits.
**   Overwriting runs the destructor of the old value even when the new
**   pointer is the same one: setting a pointer again with its destructor
**   hands the field a pointer its destructor has just been given.  A NULL
**   pointer may carry a destructor too; it is called with NULL.  A
**   destructor may call back into this API (the fields are consistent when
**   it runs); during the thread's exit such a call starts a fresh record,
**   freed by the next round of thread-exit destructors.  A copy of the
**   pointer (a Lua read, a table copy) never carries the destructor.
**
**   Functions return THREADLOCAL_OK, THREADLOCAL_ERRMEM (out of memory:
**   nothing changed; a destructor passed in was not called) or
**   THREADLOCAL_ERRARG (a NULL or otherwise bad argument, or a call that
**   cannot be made now: nothing changed).
**
**   Example:
**       threadlocal_shared *ctx;
**       if (threadlocal_shared_open("ctx", 3, &ctx) != THREADLOCAL_OK) ...
**       threadlocal_set_integer(ctx, "worker", 3);
**       threadlocal_set_pointer(ctx, "conn", conn, close_conn);
**   and in Lua on the same thread:
**       local ctx = threadlocal.shared("ctx")
**       print(ctx.worker)          --> 3
*/
#ifndef THREADLOCAL_H
#define THREADLOCAL_H

#include <stddef.h>
#include <stdint.h>

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
** bytes; a longer length is a bad argument (THREADLOCAL_ERRARG). */
#define THREADLOCAL_MAXLEN (SIZE_MAX / 2)

/* Return codes. */
#define THREADLOCAL_OK 0
#define THREADLOCAL_ERRMEM 1
#define THREADLOCAL_ERRARG 2

typedef struct threadlocal_shared threadlocal_shared;

typedef enum threadlocal_type {
  THREADLOCAL_NIL,
  THREADLOCAL_BOOLEAN,
  THREADLOCAL_INTEGER,
  THREADLOCAL_FLOAT,
  THREADLOCAL_STRING,
  THREADLOCAL_POINTER,
  THREADLOCAL_TABLE /* set from Lua; C sees only the type */
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

/* Deletes every field of the calling thread in one shared local; the next
** access starts again from the local's defaults. */
THREADLOCAL_API int threadlocal_clear(threadlocal_shared *sh);

/*
** Releases all the calling thread's data now, as if it had exited: its
** shared fields are freed (destructors run) and its Local values become
** garbage of their states.  The thread gets a new id on its next use.  For
** hosts that reuse threads across unrelated jobs.  Called while a Local's
** init runs on this thread (from a C function init calls), it does nothing
** and returns THREADLOCAL_ERRARG.
*/
THREADLOCAL_API int threadlocal_release(void);

/*
** Snapshots: hand a thread's shared fields to another thread, e.g. a
** request's context from the thread that accepted it to the pool worker
** that runs its job.
**
** threadlocal_snapshot_capture copies the calling thread's fields of the n
** shared locals in `locals` (n == 0: of every shared local it has fields
** of) into a new snapshot.  A snapshot is plain data that belongs to no
** thread: any thread may install or free it.  Pointers are copied without
** their destructors.
**
** threadlocal_snapshot_install moves the snapshot's fields in on the
** calling thread, replacing its fields of those shared locals (a shared
** local the snapshot holds no fields of is left with none), and hands back
** in *replaced a snapshot of what it replaced, moved out with destructors
** and all.  `snap` is consumed on success (do not free it); on error
** nothing changed and it is still the caller's.  To put a worker's own
** fields back after the job:
**     threadlocal_snapshot *own, *job;
**     threadlocal_snapshot_install(snap, &own);    ... run the job ...
**     threadlocal_snapshot_install(own, &job);
**     threadlocal_snapshot_free(job);              (runs the job's destructors)
**
** threadlocal_snapshot_free frees a snapshot (NULL is fine), running the
** destructors of pointers it holds: only a snapshot handed back by install
** holds any.
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
** Every allocation of the module goes through one function, realloc-like:
** f(ud, NULL, n) allocates, f(ud, p, n) resizes, f(ud, p, 0) frees (and
** returns NULL); returning NULL for n > 0 means out of memory, which the
** module reports as an error and survives.  NULL restores malloc.
**
** The function is called from every thread at once, and from thread-exit
** hooks (after the thread's other destructors may have run), so it must be
** thread-safe and must not rely on the calling thread's own thread-local
** state.  Set it before the module is first used: before the first
** luaopen_threadlocal and the first call of any function of this header.
** Setting it later is not allowed: memory made by one allocator would be
** freed by the other.
*/
typedef void *(*threadlocal_alloc)(void *ud, void *ptr, size_t size);
THREADLOCAL_API void threadlocal_set_allocator(threadlocal_alloc f, void *ud);

#ifdef __cplusplus
}
#endif

#endif
