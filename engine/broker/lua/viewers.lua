-- viewers.lua: record one node's viewer count of a room and the likes it took; return
-- the room's viewer total over live nodes and its likes total.
-- Guarantee: a node's count counts only until its expiry, so a dead node's viewers stop
-- counting within one expiry; the viewers hash itself expires when no node reports.
local viewers_key = KEYS[1]     -- <prefix>:{room:NAME}:viewers (hash node -> "count|expires_ms")
local state_key = KEYS[2]       -- <prefix>:{room:NAME}:state (hash; field likes)

local node = ARGV[1]            -- the reporting node's id
local count = tonumber(ARGV[2]) -- its viewers in the room now (0: remove it)
local now_ms = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[4])
local likes = tonumber(ARGV[5]) -- likes taken by the node since its last report
local room_ttl_ms = ARGV[6]     -- a room's keys expire this long after their last change

if count > 0 then
    redis.call('HSET', viewers_key, node, count .. '|' .. (now_ms + ttl_ms))
else
    redis.call('HDEL', viewers_key, node)
end
local total = 0
local all = redis.call('HGETALL', viewers_key)
for i = 1, #all, 2 do
    local n, expires = string.match(all[i + 1], '^(%d+)|(%d+)$')
    if n and tonumber(expires) > now_ms then
        total = total + tonumber(n)
    else
        redis.call('HDEL', viewers_key, all[i])
    end
end
if total > 0 then
    redis.call('PEXPIRE', viewers_key, ttl_ms)
end
local liked
if likes > 0 then
    liked = redis.call('HINCRBY', state_key, 'likes', likes)
    redis.call('PEXPIRE', state_key, room_ttl_ms)
else
    liked = tonumber(redis.call('HGET', state_key, 'likes') or '0')
end
return {total, liked}
