package.path = package.path .. ";" .. os.getenv("WRK_DIR") .. "/?.lua"
require "common"

local headers = {["Content-Type"] = "application/json"}

function request()
  local body = string.format('{"email": "%s", "username": "Bench"}', address())
  return wrk.format("POST", "/api/welcome-email", headers, body)
end

function response(status, headers, body)
  check(status, body, '"task_id"')
end
