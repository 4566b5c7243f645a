-- cancel.lua: cancel one order of a sale, at most once.
-- Guarantee: the order's units go back to remaining and to its user's allowance, sold
-- shrinks by the same amount, and a 'cancel' entry is appended to the orders stream, all
-- together; a second cancel of the same order changes nothing.
local meta_key = KEYS[1]        -- <prefix>:{sale:ID}:meta (hash)
local users_key = KEYS[2]       -- <prefix>:{sale:ID}:users (hash user_id -> units held)
local orders_key = KEYS[3]      -- <prefix>:{sale:ID}:orders (stream)
local ordermap_key = KEYS[4]    -- <prefix>:{sale:ID}:ordermap (hash order_id -> "qty|user_id")
local cancelled_key = KEYS[5]   -- <prefix>:{sale:ID}:cancelled (set of order ids)

local order_id = ARGV[1]
local now_ms = ARGV[2]          -- store clock, unix milliseconds

-- checks
if redis.call('EXISTS', meta_key) == 0 then
    return -1
end
local record = redis.call('HGET', ordermap_key, order_id)
if not record then
    return 0
end
if redis.call('SISMEMBER', cancelled_key, order_id) == 1 then
    return 0
end
local quantity_text, user_id = string.match(record, '^(%d+)|(.*)$')
local quantity = tonumber(quantity_text)

-- writes
redis.call('SADD', cancelled_key, order_id)
redis.call('HINCRBY', meta_key, 'remaining', quantity)
redis.call('HINCRBY', meta_key, 'sold', -quantity)
if redis.call('HINCRBY', users_key, user_id, -quantity) <= 0 then
    redis.call('HDEL', users_key, user_id)
end
redis.call('XADD', orders_key, '*', 'kind', 'cancel', 'order_id', order_id,
    'user_id', user_id, 'quantity', quantity_text, 'ts_ms', now_ms)
return 1
