-- open.lua: create a sale, unless its id is taken.
-- Guarantee: a sale's meta hash is written once, whole, or not at all.
local meta_key = KEYS[1]        -- <prefix>:{sale:ID}:meta (hash)

local room = ARGV[1]
local product_id = ARGV[2]
local price = ARGV[3]           -- integer, minor units
local per_user_limit = ARGV[4]  -- integer >= 1
local starts_at = ARGV[5]       -- unix seconds, decimal text (kept verbatim)
local ends_at = ARGV[6]         -- unix seconds, decimal text (kept verbatim)
local stock = ARGV[7]           -- integer >= 0
local opened_at = ARGV[8]       -- store clock at opening, unix seconds (decimal text)

-- checks
if redis.call('EXISTS', meta_key) == 1 then
    return 0
end

-- writes
redis.call('HSET', meta_key,
    'room', room, 'product_id', product_id, 'price', price,
    'per_user_limit', per_user_limit, 'starts_at', starts_at, 'ends_at', ends_at,
    'closed', '0', 'initial', stock, 'restocked', '0', 'remaining', stock, 'sold', '0',
    'seq', '0', 'opened_at', opened_at)
return 1
