-- publish.lua: append N payloads to a room and publish them, in one atomic run.
-- Guarantee: the offsets given, the history kept, the room's state and the message
-- published agree; a room whose meta hash is gone (flushed, evicted) starts a new epoch
-- at offset 1. With a `once` field already set in the state, nothing happens. Every
-- publish renews the room's keys for ttl_ms: a room silent that long is forgotten.
local meta_key = KEYS[1]        -- <prefix>:{room:NAME}:meta (hash e = epoch, s = top offset)
local stream_key = KEYS[2]      -- <prefix>:{room:NAME}:history (stream, ids "<offset>-1")
local state_key = KEYS[3]       -- <prefix>:{room:NAME}:state (hash of named values)

local channel = ARGV[1]         -- the room's pub/sub channel
local maxlen = ARGV[2]          -- publications kept in the stream
local new_epoch = ARGV[3]       -- the epoch to start if the room has none
local publish_command = ARGV[4] -- PUBLISH, or SPUBLISH on a cluster
local ttl_ms = ARGV[5]          -- a room's keys expire this long after its last publish
local once = ARGV[6]            -- a state field making this a once-only event ('' for none)
local nset = tonumber(ARGV[7])  -- then nset (field, value) pairs to set,
local at = 8
local ndel = tonumber(ARGV[at + 2 * nset]) -- then ndel fields to delete,
local count = tonumber(ARGV[at + 2 * nset + 1 + ndel]) -- then N payloads
local first_payload = at + 2 * nset + 1 + ndel + 1

local epoch = redis.call('HGET', meta_key, 'e')
if not epoch then
    epoch = new_epoch
    redis.call('DEL', stream_key)
    redis.call('HSET', meta_key, 'e', epoch, 's', 0)
end
if once ~= '' then
    if redis.call('HSETNX', state_key, once, '1') == 0 then
        return {epoch, 0, tonumber(redis.call('HGET', meta_key, 's'))}
    end
end
for i = 0, nset - 1 do
    redis.call('HSET', state_key, ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
end
for i = 1, ndel do
    redis.call('HDEL', state_key, ARGV[at + 2 * nset + i])
end
local first = tonumber(redis.call('HGET', meta_key, 's')) + 1
local top = redis.call('HINCRBY', meta_key, 's', count)

local payloads = {}
for i = 1, count do
    local payload = ARGV[first_payload + i - 1]
    redis.call('XADD', stream_key, 'MAXLEN', maxlen, (first + i - 1) .. '-1', 'd', payload)
    payloads[i] = payload
end
if count > 0 then
    redis.call(publish_command, channel, cmsgpack.pack({epoch, first, payloads}))
end
redis.call('PEXPIRE', meta_key, ttl_ms)
redis.call('PEXPIRE', stream_key, ttl_ms)
redis.call('PEXPIRE', state_key, ttl_ms)
return {epoch, first, top}
