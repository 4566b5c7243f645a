-- history.lua: a room's position and its publications after an offset, read atomically.
-- Returns {epoch or false, top offset, entries after `after` (up to `limit`), newest
-- entries (up to `limit`, newest first)}; entries as XRANGE gives them.
local meta_key = KEYS[1]        -- <prefix>:{room:NAME}:meta (hash e = epoch, s = top offset)
local stream_key = KEYS[2]      -- <prefix>:{room:NAME}:history (stream, ids "<offset>-1")

local after = tonumber(ARGV[1]) -- offset the caller holds
local limit = tonumber(ARGV[2]) -- most entries in each list

local meta = redis.call('HMGET', meta_key, 'e', 's')
local entries = redis.call('XRANGE', stream_key, (after + 1) .. '-1', '+', 'COUNT', limit)
local newest = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', limit)
return {meta[1], tonumber(meta[2] or '0'), entries, newest}
