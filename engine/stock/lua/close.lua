-- close.lua: stop a sale for good (idempotent); answers with the sale's meta.
local meta_key = KEYS[1]        -- <prefix>:{sale:ID}:meta (hash)

-- checks
if redis.call('EXISTS', meta_key) == 0 then
    return {'not_found'}
end

-- writes
redis.call('HSET', meta_key, 'closed', '1')
return {'ok', redis.call('HGETALL', meta_key)}
