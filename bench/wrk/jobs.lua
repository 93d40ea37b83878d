package.path = package.path .. ";" .. os.getenv("WRK_DIR") .. "/?.lua"
require "common"

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
-- JOBS_ARGS: the arguments of `jobs`, e.g. `first: 20` or `first: 20, state: SUCCESS`.
local query = string.format(
  '{ jobs(%s) { edges { cursor node { id kind state createdAt } } pageInfo { hasNextPage endCursor } } }',
  os.getenv("JOBS_ARGS"))
local body = string.format('{"query": "%s"}', query)

function request()
  return wrk.format("POST", "/graphql", headers, body)
end

function response(status, headers, body)
  check(status, body, '"pageInfo"')
end
