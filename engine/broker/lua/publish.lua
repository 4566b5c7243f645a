-- publish.lua: append N payloads to a room and publish them, in one atomic run.
-- Guarantee: the offsets given, the history kept and the message published agree; a
-- room whose meta hash is gone (flushed, evicted) starts a new epoch at offset 1.
local meta_key = KEYS[1]        -- <prefix>:{room:NAME}:meta (hash e = epoch, s = top offset)
local stream_key = KEYS[2]      -- <prefix>:{room:NAME}:history (stream, ids "<offset>-1")

local channel = ARGV[1]         -- the room's pub/sub channel
local maxlen = ARGV[2]          -- publications kept in the stream
local new_epoch = ARGV[3]       -- the epoch to start if the room has none
local publish_command = ARGV[4] -- PUBLISH, or SPUBLISH on a cluster
local count = tonumber(ARGV[5]) -- N, then N payloads from ARGV[6]

local epoch = redis.call('HGET', meta_key, 'e')
if not epoch then
    epoch = new_epoch
    redis.call('DEL', stream_key)
    redis.call('HSET', meta_key, 'e', epoch, 's', 0)
end
local first = tonumber(redis.call('HGET', meta_key, 's')) + 1
local top = redis.call('HINCRBY', meta_key, 's', count)

local payloads = {}
for i = 1, count do
    local payload = ARGV[5 + i]
    redis.call('XADD', stream_key, 'MAXLEN', maxlen, (first + i - 1) .. '-1', 'd', payload)
    payloads[i] = payload
end
redis.call(publish_command, channel, cmsgpack.pack({epoch, first, payloads}))
return {epoch, first, top}
