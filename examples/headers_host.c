/*
** headers_host: a C host and its script share a request's data, nested
** tables included, through the shared local "request".
**
** A worker thread runs a script that stores the request as it parsed it:
**     req.headers = { host = "example.org", ["x-id"] = 7 }
**     req.path = { "a", "b" }
** The host, on the same thread, reads req.headers.host, req.headers["x-id"]
** and req.path[1] by paths of keys, walks the thread's fields, and answers
** with a nested table, req.reply = { status = 200, headers = { ... } },
** which a second script reads.  The main thread, which stored nothing,
** sees no request: the fields are per thread.  Prints one "ok: ..." line
** when everything matched, or "error: ..." lines and exits 1.
**
**   usage: headers_host
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

static const char *parse_script =
  "local req = require('threadlocal').shared('request')\n"
  "req.method = 'GET'\n"
  "req.headers = { host = 'example.org', ['x-id'] = 7 }\n"
  "req.path = { 'a', 'b' }\n";

static const char *reply_script =
  "local req = require('threadlocal').shared('request')\n"
  "assert(req.reply.status == 200, 'status')\n"
  "assert(req.reply.headers['content-type'] == 'text/plain', 'content-type')\n"
  "return req.reply.status .. ' ' .. req.reply.headers['content-type']\n";

static int errors;

static void fail(const char *what, int rc) {
  printf("error: %s: %s\n", what, threadlocal_strerror(rc));
  errors++;
}

/* Runs code in a new state on this thread; copies what it returns to out. */
static int run_script(const char *code, char *out, size_t size) {
  lua_State *L = luaL_newstate();
  int ok;
  luaL_openlibs(L);
  lua_getglobal(L, "package"); /* require finds it in package.preload */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_threadlocal);
  lua_setfield(L, -2, "threadlocal");
  lua_pop(L, 2);
  ok = luaL_dostring(L, code) == 0;
  if (!ok) printf("error: script: %s\n", lua_tostring(L, -1));
  else if (out != NULL) snprintf(out, size, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
  lua_close(L);
  return ok;
}

/* Reads the value at a path of keys below the request's fields. */
static threadlocal_value get(const threadlocal_node *req, const threadlocal_value *path,
                             size_t n) {
  threadlocal_value v;
  int rc = threadlocal_node_get(req, path, n, &v);
  if (rc != THREADLOCAL_OK) {
    fail("threadlocal_node_get", rc);
    v.type = THREADLOCAL_NIL;
  }
  return v;
}

static void *worker(void *arg) {
  threadlocal_shared *request;
  threadlocal_node req, reply, headers;
  threadlocal_value path[2], host, xid, first, key, value;
  threadlocal_iter it;
  char *line = (char *)arg, fields[128] = "", answer[64] = "";
  int rc, n = 0;

  /* the name is a C string: no length to count */
  if ((rc = threadlocal_shared_open_cstr("request", &request)) != THREADLOCAL_OK) {
    fail("threadlocal_shared_open_cstr", rc);
    return NULL;
  }
  threadlocal_root(request, &req);
  if (!run_script(parse_script, NULL, 0)) {
    errors++;
    return NULL;
  }

  /* req.headers.host, req.headers["x-id"], req.path[1] */
  path[0] = threadlocal_string("headers");
  path[1] = threadlocal_string("host");
  host = get(&req, path, 2);
  path[1] = threadlocal_string("x-id");
  xid = get(&req, path, 2);
  path[0] = threadlocal_string("path");
  path[1] = threadlocal_integer(1);
  first = get(&req, path, 2);
  if (host.type != THREADLOCAL_STRING || xid.type != THREADLOCAL_INTEGER ||
      first.type != THREADLOCAL_STRING) {
    printf("error: the script's request is not what the host read\n");
    errors++;
    return NULL;
  }

  /* every field of this thread, in the order the script stored them */
  if ((rc = threadlocal_node_iter(&req, &it)) != THREADLOCAL_OK) fail("threadlocal_node_iter", rc);
  while ((rc = threadlocal_next(&it, &key, &value)) == THREADLOCAL_OK &&
         key.type != THREADLOCAL_NIL) {
    size_t used = strlen(fields);
    if (key.type == THREADLOCAL_STRING)
      snprintf(fields + used, sizeof fields - used, "%s%s%s", n++ ? " " : "", key.u.string.ptr,
               value.type == THREADLOCAL_TABLE ? "{}" : "");
  }
  if (rc != THREADLOCAL_OK) fail("threadlocal_next", rc);

  /* the answer: req.reply = { status = 200, headers = { ["content-type"] = ... } } */
  key = threadlocal_string("reply");
  if ((rc = threadlocal_node_newtable(&req, &key, &reply)) != THREADLOCAL_OK) {
    fail("threadlocal_node_newtable", rc);
    return NULL;
  }
  key = threadlocal_string("status");
  value = threadlocal_integer(200);
  if ((rc = threadlocal_node_set(&reply, &key, &value)) != THREADLOCAL_OK)
    fail("threadlocal_node_set", rc);
  key = threadlocal_string("headers");
  if ((rc = threadlocal_node_newtable(&reply, &key, &headers)) != THREADLOCAL_OK)
    fail("threadlocal_node_newtable", rc);
  key = threadlocal_string("content-type");
  value = threadlocal_string("text/plain");
  if ((rc = threadlocal_node_set(&headers, &key, &value)) != THREADLOCAL_OK)
    fail("threadlocal_node_set", rc);
  if (!run_script(reply_script, answer, sizeof answer)) errors++;

  snprintf(line, 512,
           "ok: C read req.headers.host=%s, x-id=%lld, req.path[1]=%s; fields: %s; "
           "the script read the reply: %s",
           host.u.string.ptr, (long long)xid.u.integer, first.u.string.ptr, fields, answer);
  return NULL;
}

int main(void) {
  pthread_t th;
  threadlocal_shared *request;
  threadlocal_node req;
  threadlocal_value path[2], v;
  char line[512] = "";
  pthread_create(&th, NULL, worker, line);
  pthread_join(th, NULL);
  /* this thread stored no request */
  threadlocal_shared_open_cstr("request", &request);
  threadlocal_root(request, &req);
  path[0] = threadlocal_string("headers");
  path[1] = threadlocal_string("host");
  if (threadlocal_node_get(&req, path, 2, &v) != THREADLOCAL_OK || v.type != THREADLOCAL_NIL) {
    printf("error: the main thread sees the worker's request\n");
    errors++;
  }
  if (errors == 0 && line[0] != '\0') printf("%s\n", line);
  return errors != 0 || line[0] == '\0';
}
