-- A tiny "ORM" whose current database lives in a shared local, the way
-- Peewee's ThreadSafeDatabaseMetadata keeps it in a threading.local: one
-- thread switching databases cannot make another thread write to the wrong
-- one.  Every thread starts on "primary" (the shared local's defaults), and
-- a switch lasts for that thread across every state it runs.
local threadlocal = require "threadlocal"

local orm = {}
local meta = threadlocal.shared("orm.meta", { database = "primary" })

function orm.use(database)
  meta.database = database
end

function orm.database()
  return meta.database
end

local Model = {}
Model.__index = Model

function orm.model(table_name)
  return setmetatable({ table_name = table_name }, Model)
end

-- host.insert is the "database server", provided by the C host.
function Model:create(row)
  return host.insert(meta.database, self.table_name, row.worker, row.job)
end

return orm
