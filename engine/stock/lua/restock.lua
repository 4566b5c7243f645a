-- restock.lua: add units to a sale that is not closed; answers with the sale's meta.
-- Guarantee: restocked and remaining grow together, so initial + restocked = remaining + sold.
local meta_key = KEYS[1]        -- <prefix>:{sale:ID}:meta (hash)

local quantity = ARGV[1]        -- integer >= 1 (checked by the caller)

-- checks
local closed = redis.call('HGET', meta_key, 'closed')
if not closed then
    return {'not_found'}
end
if closed == '1' then
    return {'closed'}
end

-- writes
redis.call('HINCRBY', meta_key, 'restocked', quantity)
redis.call('HINCRBY', meta_key, 'remaining', quantity)
return {'ok', redis.call('HGETALL', meta_key)}
