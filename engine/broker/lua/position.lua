-- position.lua: a room's epoch and top offset, starting a new epoch if it has none.
-- Guarantee: same start-of-epoch rule as publish.lua (history of a lost epoch is dropped).
local meta_key = KEYS[1]        -- <prefix>:{room:NAME}:meta (hash e = epoch, s = top offset)
local stream_key = KEYS[2]      -- <prefix>:{room:NAME}:history (stream)

local new_epoch = ARGV[1]       -- the epoch to start if the room has none
local ttl_ms = ARGV[2]          -- expiry of a room started here (publish.lua renews it)

local epoch = redis.call('HGET', meta_key, 'e')
if not epoch then
    epoch = new_epoch
    redis.call('DEL', stream_key)
    redis.call('HSET', meta_key, 'e', epoch, 's', 0)
    redis.call('PEXPIRE', meta_key, ttl_ms)  -- a room nobody publishes in is forgotten
end
return {epoch, tonumber(redis.call('HGET', meta_key, 's'))}
