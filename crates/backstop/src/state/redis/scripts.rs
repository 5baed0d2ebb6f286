//! The Lua scripts that keep Redis the atomic point of agreement between
//! instances. Each runs as one unit on the server, so two instances recording
//! failures on the same scope at the same instant both count, in some order.
//!
//! A breaker is a hash under `<prefix>breaker:<scope>` with the fields
//! `until`, `reason`, `consecutive`, `errors`, `last_failure` and one
//! `c:<reason>` count per reason (the same data as a [`super::BreakerSnapshot`],
//! less the probe lease, which lives in its own key `<prefix>probe:<scope>`).
//! Every script that changes a breaker publishes `<instance> <scope>` on the
//! events channel from inside the script, so the message order is the order
//! of the changes.

use redis::Script;
use std::sync::LazyLock;

/// `Breaker::on_failure` (crate::failover::breaker), applied in Redis.
///
/// KEYS: breaker, probe. ARGV: now, reason, failure_window_ms, probe_interval_ms,
/// channel, message, then the cooldown of rung 1, 2, … up to the ladder's top
/// (the last one repeats for higher rungs). Returns the breaker's hash after.
pub(super) static FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
local reason = ARGV[2]
local window = tonumber(ARGV[3])
local probe_interval = tonumber(ARGV[4])
local function num(field)
  local v = redis.call('HGET', KEYS[1], field)
  if v then return tonumber(v) end
  return nil
end
local untl = num('until')
local last = num('last_failure')
local last_bad = last
if untl and (not last_bad or untl > last_bad) then last_bad = untl end
if last_bad and now - last_bad >= window then
  -- Old failures stop counting; the expired window still makes this failure a
  -- half-open one, exactly as the local breaker sees it.
  redis.call('DEL', KEYS[1])
end
local consecutive = num('consecutive') or 0
redis.call('HINCRBY', KEYS[1], 'errors', 1)
redis.call('HINCRBY', KEYS[1], 'c:' .. reason, 1)
if not last or now > last then last = now end
redis.call('HSET', KEYS[1], 'last_failure', string.format('%d', last))
local state = 'closed'
if untl then
  if now < untl then state = 'open' else state = 'half_open' end
end
if state ~= 'open' or consecutive == 0 then consecutive = consecutive + 1 end
redis.call('HSET', KEYS[1], 'consecutive', string.format('%d', consecutive))
local rungs = #ARGV - 6
local rung = consecutive
if rung > rungs then rung = rungs end
local new_until = now + tonumber(ARGV[6 + rung])
if state == 'half_open' and now + probe_interval > new_until then
  new_until = now + probe_interval
end
if not (state == 'open' and untl >= new_until) then
  untl = new_until
  redis.call('HSET', KEYS[1], 'until', string.format('%d', untl), 'reason', reason)
end
redis.call('DEL', KEYS[2])
local ttl = untl - now
if ttl < 0 then ttl = 0 end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + window + 1000))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return redis.call('HGETALL', KEYS[1])
"#,
    )
});

/// Merge a breaker another instance kept while it could not reach Redis: the
/// later window, the higher rung and counts (a join: merging twice changes nothing).
///
/// A breaker whose last failure is not after a close of its scope (its tombstone, or the
/// last clear-all) is stale and left out.
///
/// KEYS: breaker, tombstone, clear-all stamp. ARGV: now, failure_window_ms, channel,
/// message, until, reason, consecutive, errors, last_failure, then `c:<reason>`, count
/// pairs. Returns the breaker's hash after.
pub(super) static MERGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local closed = tonumber(redis.call('GET', KEYS[2]) or '-1')
local cleared = tonumber(redis.call('GET', KEYS[3]) or '-1')
if cleared > closed then closed = cleared end
if tonumber(ARGV[9]) <= closed then
  return redis.call('HGETALL', KEYS[1])
end
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local function num(field)
  local v = redis.call('HGET', KEYS[1], field)
  if v then return tonumber(v) end
  return nil
end
local function raise(field, value)
  local old = num(field)
  if not old or value > old then
    redis.call('HSET', KEYS[1], field, string.format('%d', value))
  end
end
local untl = tonumber(ARGV[5])
local old_until = num('until')
if not old_until or untl > old_until then
  redis.call('HSET', KEYS[1], 'until', string.format('%d', untl), 'reason', ARGV[6])
  old_until = untl
end
raise('consecutive', tonumber(ARGV[7]))
raise('errors', tonumber(ARGV[8]))
raise('last_failure', tonumber(ARGV[9]))
local i = 10
while i < #ARGV do
  raise(ARGV[i], tonumber(ARGV[i + 1]))
  i = i + 2
end
local ttl = old_until - now
if ttl < 0 then ttl = 0 end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + window + 1000))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return redis.call('HGETALL', KEYS[1])
"#,
    )
});

/// Close a breaker (a success, or by hand) and leave a tombstone `closed:<scope>` = when,
/// so a reconciling instance does not bring back a breaker closed while it was away.
/// KEYS: breaker, probe, tombstone. ARGV: channel, message, now_ms, tombstone_ttl_ms.
/// Returns 1 if there was a breaker.
pub(super) static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local had = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
local old = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[3]) > old then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return had
"#,
    )
});

/// Try to take a half-open scope's probe. KEYS: probe. ARGV: instance, lease_ms.
/// Returns `{status, ttl_ms}`: status 1 = taken now, 2 = this instance already holds it,
/// 0 = another instance holds it (ttl -1 when unknown).
pub(super) static TAKE_PROBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, tonumber(ARGV[2])} end
local status = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then status = 2 end
return {status, redis.call('PTTL', KEYS[1])}
"#,
    )
});

/// Extend this instance's probe to the request's full lease. KEYS: probe.
/// ARGV: instance, lease_ms. Returns 1 if it was still ours.
pub(super) static EXTEND_PROBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Give back this instance's probe. KEYS: probe. ARGV: instance, channel, message.
/// Returns 1 if it was ours.
pub(super) static RELEASE_PROBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// Raise `provider:profile` last-use times. KEYS: usage hash. ARGV: field, ms pairs.
pub(super) static MARK_USED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local i = 1
while i < #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if not old or tonumber(ARGV[i + 1]) > tonumber(old) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
return 1
"#,
    )
});

/// A session write ([`super::sessions`]): compare-and-set field by field.
///
/// A session is a hash under `<prefix>session:<id>`: one field per key of its
/// `sessions.json` record, each holding that key's JSON text. KEYS: the session.
/// ARGV: ttl_ms, now, created_at, delete (`1`/`0`), channel, message, then
/// `field, expected, new` triples (`''` = absent). A field is set only if it still
/// holds `expected` (what the writer saw), so a stale writer cannot overwrite a
/// change it had not seen. `updatedAt` is raised when a field changed, `lastUsedAt`
/// always; the key's TTL is the idle TTL. A delete removes the key once no
/// content field is left. Publishes `message` when something changed. Returns the
/// hash after (empty when gone).
pub(super) static SESSION_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[2])
local applied = 0
for i = 7, #ARGV, 3 do
  local f, expected, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('HGET', KEYS[1], f)
  if not cur then cur = '' end
  if cur == expected then
    if new == '' then redis.call('HDEL', KEYS[1], f) else redis.call('HSET', KEYS[1], f, new) end
    applied = applied + 1
  end
end
local content = false
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= 'createdAt' and f ~= 'updatedAt' and f ~= 'lastUsedAt' then
    content = true
    break
  end
end
local function raise(f)
  local v = tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0
  if now > v then redis.call('HSET', KEYS[1], f, ARGV[2]) end
end
if ARGV[4] == '1' and not content then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 1 or (ARGV[4] ~= '1' and #ARGV < 7) then
  -- (an existing session, or a new one without content fields: create it; a stale
  -- write whose every field conflicted does not bring a removed session back)
  redis.call('HSETNX', KEYS[1], 'createdAt', ARGV[3])
  if applied > 0 then raise('updatedAt') end
  raise('lastUsedAt')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if applied > 0 then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return redis.call('HGETALL', KEYS[1])
"#,
    )
});

/// Sessions used: raise `lastUsedAt` and renew the idle TTL of those that exist.
/// KEYS: sessions. ARGV: ttl_ms, then one time per key.
pub(super) static SESSION_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then
    local at = ARGV[i + 1]
    local v = tonumber(redis.call('HGET', k, 'lastUsedAt') or '0') or 0
    if tonumber(at) > v then redis.call('HSET', k, 'lastUsedAt', at) end
    redis.call('PEXPIRE', k, ARGV[1])
  end
end
return 0
"#,
    )
});

/// Put a whole session back when Redis lost it (it restarted empty): only if the key
/// does not exist. KEYS: the session. ARGV: ttl_ms, then field, value pairs. Returns 1
/// when written.
pub(super) static SESSION_RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 or #ARGV < 3 then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Evict a session to fit the budget, unless it was used or changed since the
/// evicting instance looked. KEYS: the session. ARGV: lastUsedAt, updatedAt (as seen),
/// channel, message. Returns 1 when deleted.
pub(super) static SESSION_EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local used = redis.call('HGET', KEYS[1], 'lastUsedAt') or ''
local updated = redis.call('HGET', KEYS[1], 'updatedAt') or ''
if used ~= ARGV[1] or updated ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#,
    )
});
