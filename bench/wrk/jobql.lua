package.path = package.path .. ";" .. os.getenv("WRK_DIR") .. "/?.lua"
require "common"

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
local query = 'mutation($e: String!) { sendWelcomeEmail(email: $e, username: \\"Bench\\") { id } }'

function request()
  local body = string.format('{"query": "%s", "variables": {"e": "%s"}}', query, address())
  return wrk.format("POST", "/graphql", headers, body)
end

function response(status, headers, body)
  check(status, body, '"id"')
end
