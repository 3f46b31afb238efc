//! The Lua scripts that make each write one atomic round trip.
//!
//! Every script touches the session hash (`KEYS[1]`) and, in single-node mode
//! only, the owner's index set (`KEYS[2]`, when given). In cluster mode no
//! script is ever handed two keys, so none can cross slots.
//!
//! Record arguments (`ARGV`), shared by `CREATE` and `SAVE`:
//!
//! | # | value |
//! |---|---|
//! | 1 | payload |
//! | 2 | version |
//! | 3 | expires_at (unix seconds) |
//! | 4 | last_activity (unix seconds) |
//! | 5–7 | user_id, ip_address, user_agent: `+value`, or `-` when absent |
//! | 8 | expires_at in unix milliseconds (for `PEXPIREAT`) |
//! | 9 | the client's clock, unix milliseconds |
//! | 10 | the storage key (the index set's member) |
//! | 11 | `SAVE` only: the expected version |

use std::sync::LazyLock;

use redis::Script;

/// Lua helpers shared by the scripts.
macro_rules! prelude {
    () => {
        r#"
local function record_fields(a)
  local fields = {'payload', a[1], 'version', a[2], 'expires_at', a[3], 'last_activity', a[4]}
  local absent = {}
  local names = {'user_id', 'ip_address', 'user_agent'}
  for i = 1, 3 do
    local v = a[4 + i]
    if string.sub(v, 1, 1) == '+' then
      fields[#fields + 1] = names[i]
      fields[#fields + 1] = string.sub(v, 2)
    else
      absent[#absent + 1] = names[i]
    end
  end
  return fields, absent
end

-- Adds `member` to the index `set` and makes the set live at least until
-- `exp_ms`: its expiry only ever moves later, so it outlives every session
-- it lists. A session that is already over is not indexed.
local function index(set, member, exp_ms, now_ms)
  if tonumber(exp_ms) <= tonumber(now_ms) then
    return 0
  end
  redis.call('SADD', set, member)
  local ttl = redis.call('PTTL', set)
  if ttl < 0 or tonumber(now_ms) + ttl < tonumber(exp_ms) then
    redis.call('PEXPIREAT', set, exp_ms)
  end
  return 1
end
"#
    };
}

/// Insert-if-absent. Returns 1 when applied, 0 when the key holds a record.
/// A record that is already expired is answered 1 and not written.
pub(crate) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if tonumber(ARGV[8]) <= tonumber(ARGV[9]) then
  return 1
end
local fields = record_fields(ARGV)
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], ARGV[8])
if KEYS[2] then
  index(KEYS[2], ARGV[10], ARGV[8], ARGV[9])
end
return 1
"#
    ))
});

/// Compare-and-swap on `version`. Returns `{0}` on conflict (including a
/// missing key: a destroyed or expired record is never re-created), `{1}` or
/// `{1, previous_owner}` when applied.
pub(crate) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local current = redis.call('HMGET', KEYS[1], 'version', 'user_id')
if current[1] ~= ARGV[11] then
  return {0}
end
local fields, absent = record_fields(ARGV)
redis.call('HSET', KEYS[1], unpack(fields))
if #absent > 0 then
  redis.call('HDEL', KEYS[1], unpack(absent))
end
redis.call('PEXPIREAT', KEYS[1], ARGV[8])
if KEYS[2] then
  index(KEYS[2], ARGV[10], ARGV[8], ARGV[9])
end
if current[2] then
  return {1, current[2]}
end
return {1}
"#
    ))
});

/// Compare-and-swap on `version` of a save that keeps the stored expiry and
/// owner (`SessionStore::save_in_place`): writes the payload, version and
/// last_activity, and ip_address and user_agent (`+value`, or `-` when
/// absent), and leaves the key's TTL and the owner's index alone. `ARGV` =
/// payload, version, last_activity, ip_address, user_agent, expected
/// version. Returns 1 when applied, 0 on conflict (a missing key included).
pub(crate) static SAVE_IN_PLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[6] then
  return 0
end
local fields = {'payload', ARGV[1], 'version', ARGV[2], 'last_activity', ARGV[3]}
local absent = {}
local names = {'ip_address', 'user_agent'}
for i = 1, 2 do
  local v = ARGV[3 + i]
  if string.byte(v, 1) == 43 then
    fields[#fields + 1] = names[i]
    fields[#fields + 1] = string.sub(v, 2)
  else
    absent[#absent + 1] = names[i]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if #absent > 0 then
  redis.call('HDEL', KEYS[1], unpack(absent))
end
return 1
"#,
    )
});

/// Moves the expiry of an existing record at the expected version: `ARGV` =
/// last_activity, expires_at, expires_at in ms, expected version. Never
/// creates the key, and never moves the expiry backwards. Returns `{0}` when
/// the key is missing or at another version, `{1}` or `{1, owner}` when
/// applied.
pub(crate) static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('HMGET', KEYS[1], 'version', 'user_id', 'expires_at')
if current[1] ~= ARGV[4] then
  return {0}
end
if tonumber(current[3]) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'last_activity', ARGV[1], 'expires_at', ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'last_activity', ARGV[1])
end
if current[2] then
  return {1, current[2]}
end
return {1}
"#,
    )
});

/// Deletes the record if it is at the expected version (`ARGV[1]`). Given
/// the owner's index set (`KEYS[2]`), the member (`ARGV[2]`) and the owner
/// the caller expects (`ARGV[3]`), it also removes the member from the set
/// when the record's owner is that one. Returns `{0}` when missing or at
/// another version, `{1}` when deleted with no index entry left to remove,
/// `{1, owner}` when deleted and the entry in `owner`'s set is the caller's
/// to remove.
pub(crate) static RETIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('HMGET', KEYS[1], 'version', 'user_id')
if current[1] ~= ARGV[1] then
  return {0}
end
redis.call('DEL', KEYS[1])
if current[2] then
  if KEYS[2] and current[2] == ARGV[3] then
    redis.call('SREM', KEYS[2], ARGV[2])
    return {1}
  end
  return {1, current[2]}
end
return {1}
"#,
    )
});

/// Deletes the record and returns its owner (nil when none or missing).
pub(crate) static DESTROY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owner = redis.call('HGET', KEYS[1], 'user_id')
redis.call('DEL', KEYS[1])
return owner
"#,
    )
});

/// Deletes the record if `ARGV[1]` owns it. Returns 1 when deleted, 0 when
/// the key is missing, -1 when the record has another owner or none.
pub(crate) static DESTROY_OWNED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then
  return -1
end
redis.call('DEL', KEYS[1])
return 1
"#,
    )
});

/// Removes the members `ARGV` from the index set `KEYS[1]`: `SREM`, as a
/// script so that it can share a pipeline with the other script calls, in
/// slices of 1,000 members (Lua's `unpack` is bounded). Returns how many
/// were removed.
pub(crate) static UNINDEX: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = 0
for i = 1, #ARGV, 1000 do
  removed = removed + redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return removed
"#,
    )
});

/// The index update on its own (one key: the set): `ARGV` = member,
/// expires_at in ms, the client's clock in ms.
pub(crate) static INDEX: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
return index(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"#
    ))
});
