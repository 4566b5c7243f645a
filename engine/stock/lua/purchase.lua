-- purchase.lua: answer N purchase requests of one sale, in order, in one atomic run.
-- A single purchase is a batch of one.
--
-- Per request, every check comes before any write:
--   request id answered before -> that first answer, unchanged (another user's id ->
--   'rid_conflict', not remembered); quantity outside 1..per_user_limit -> 'bad_quantity';
--   closed -> 'closed'; now < starts_at -> 'not_started'; now >= ends_at -> 'ended';
--   user's units + quantity > limit -> 'limit_reached'; remaining < quantity -> 'sold_out';
--   else 'ok': take the units, count them for the user, append the order to the stream.
-- Every answer except 'rid_conflict' and 'not_started' is remembered under its request
-- id ('not_started' is not final: the same attempt may buy once the sale starts).
--
-- Returns false when the sale does not exist (nothing is written), else one answer per
-- request: "reason|quantity|remaining|order_id|user_id" (remaining and order_id may be
-- empty; user_id is last so it may contain '|'), with a leading '+' when it is a
-- remembered first answer given again.
local meta_key = KEYS[1]        -- <prefix>:{sale:ID}:meta (hash)
local users_key = KEYS[2]       -- <prefix>:{sale:ID}:users (hash user_id -> units held)
local rids_key = KEYS[3]        -- <prefix>:{sale:ID}:rids (hash request_id -> answer)
local orders_key = KEYS[4]      -- <prefix>:{sale:ID}:orders (stream)
local ordermap_key = KEYS[5]    -- <prefix>:{sale:ID}:ordermap (hash order_id -> "qty|user_id")

local sale_id = ARGV[1]
local now = tonumber(ARGV[2])   -- store clock, unix seconds (decimal text)
local now_ms = ARGV[3]          -- the same instant in unix milliseconds
local count = tonumber(ARGV[4]) -- N, then N triples from ARGV[5]:
local FIRST = 5                 -- user_id, quantity (decimal integer), request_id

local meta = redis.call('HMGET', meta_key,
    'closed', 'starts_at', 'ends_at', 'per_user_limit', 'price', 'remaining')
if not meta[1] then
    return false
end
local closed = meta[1] == '1'
local starts_at = tonumber(meta[2])
local ends_at = tonumber(meta[3])
local limit = tonumber(meta[4])
local price = meta[5]
local remaining = tonumber(meta[6])

local answers = {}
for i = 1, count do
    local at = FIRST + 3 * (i - 1)
    local user_id = ARGV[at]
    local quantity_text = ARGV[at + 1]
    local request_id = ARGV[at + 2]

    local answer
    local first = redis.call('HGET', rids_key, request_id)
    if first then
        if string.match(first, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$') == user_id then
            answer = '+' .. first
        else
            answer = 'rid_conflict|' .. quantity_text .. '|||' .. user_id
        end
    else
        -- checks
        local quantity = tonumber(quantity_text)
        local reason
        if not quantity or quantity ~= math.floor(quantity) or quantity < 1 or quantity > limit then
            reason = 'bad_quantity'
        elseif closed then
            reason = 'closed'
        elseif now < starts_at then
            reason = 'not_started'
        elseif now >= ends_at then
            reason = 'ended'
        elseif tonumber(redis.call('HGET', users_key, user_id) or '0') + quantity > limit then
            reason = 'limit_reached'
        elseif remaining < quantity then
            reason = 'sold_out'
        else
            reason = 'ok'
        end

        -- writes
        local order_id = ''
        if reason == 'ok' then
            order_id = sale_id .. '-' .. redis.call('HINCRBY', meta_key, 'seq', 1)
            remaining = redis.call('HINCRBY', meta_key, 'remaining', -quantity)
            redis.call('HINCRBY', meta_key, 'sold', quantity)
            redis.call('HINCRBY', users_key, user_id, quantity)
            redis.call('HSET', ordermap_key, order_id, quantity_text .. '|' .. user_id)
            redis.call('XADD', orders_key, '*', 'kind', 'order', 'order_id', order_id,
                'user_id', user_id, 'quantity', quantity_text, 'price', price,
                'request_id', request_id, 'ts_ms', now_ms)
        end
        local remaining_text = ''
        if reason ~= 'bad_quantity' then
            remaining_text = string.format('%d', remaining)
        end
        answer = reason .. '|' .. quantity_text .. '|' .. remaining_text .. '|' .. order_id
            .. '|' .. user_id
        if reason ~= 'not_started' then
            redis.call('HSET', rids_key, request_id, answer)
        end
    end
    answers[i] = answer
end
return answers
