//! The one Redis call of a fleet member: a Lua script that, atomically, drops expired
//! leases, grants this instance what it asks for out of what the others leave free,
//! renews its lease with its usage, and answers with every live lease.
//!
//! Atomic in Redis, so the sum of live grants never passes the budget by construction:
//! a grant only ever takes slots no live lease holds, less a share (budget /
//! `expected_instances`) kept for each expected instance that holds no lease, because such
//! an instance may be running on its static share without Redis. Expiry uses Redis's own
//! clock, so the instances' clocks do not matter.

use std::time::Duration;

use redis::aio::ConnectionLike;

/// KEYS[1]: the hash of leases, field = instance id, value = "grant expires_ms borrowed
/// waiters". ARGV: id, budget, want, borrowed, waiters, ttl_ms, expected_instances.
/// Returns {grant, now_ms, id, value, id, value, ...} as strings.
const GRANT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, budget, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, expected = tonumber(ARGV[6]), tonumber(ARGV[7])
local others, live = 0, 1
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local granted, expires = string.match(all[i + 1], '^(%d+) (%d+)')
  if granted == nil or tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= id then
    others = others + tonumber(granted)
    live = live + 1
  end
end
local share = math.max(1, math.floor(budget / expected))
local absent = math.max(0, expected - live)
local free = math.max(0, budget - others - absent * share)
local grant = math.min(want, free)
redis.call('HSET', KEYS[1], id, grant .. ' ' .. (now + ttl) .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, tostring(now))
table.insert(out, 1, tostring(grant))
return out
";

/// What this instance asks for and tells the fleet in one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The fleet's budget as this instance reads it.
    pub budget: usize,
    /// Slots wanted: never less than the pool may hold now, so a lease shrinks only after
    /// the pool did.
    pub want: usize,
    /// Connections lent now.
    pub borrowed: usize,
    /// Borrowers waiting now: the demand that makes other instances give slots back.
    pub waiters: usize,
}

/// One instance's live lease, as the script last saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRecord {
    /// The instance id.
    pub id: String,
    /// Slots it holds.
    pub lease: usize,
    /// Connections it had lent at its last heartbeat.
    pub borrowed: usize,
    /// Borrowers it had waiting at its last heartbeat.
    pub waiters: usize,
    /// Milliseconds until its lease expires unless renewed.
    pub expires_in_ms: u64,
}

/// The script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// Slots this instance now holds.
    pub grant: usize,
    /// Every live lease, this one included.
    pub leases: Vec<LeaseRecord>,
}

/// Why a heartbeat failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within a heartbeat.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The script answered something this version cannot read.
    #[error("unexpected lease script reply: {0}")]
    Reply(String),
}

/// Runs the grant script for instance `id` on `key`. Its only key, so in a Redis Cluster
/// it runs where `key`'s slot lives, and needs no hash tag.
pub async fn grant(
    conn: &mut impl ConnectionLike,
    key: &str,
    id: &str,
    ask: Ask,
    ttl: Duration,
    expected_instances: usize,
) -> Result<Granted, LeaseError> {
    let reply: Vec<String> = redis::Script::new(GRANT)
        .key(key)
        .arg(id)
        .arg(ask.budget)
        .arg(ask.want)
        .arg(ask.borrowed)
        .arg(ask.waiters)
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .arg(expected_instances)
        .invoke_async(conn)
        .await?;
    parse(&reply).ok_or_else(|| LeaseError::Reply(reply.join(" ")))
}

/// Deletes instance `id`'s lease on `key` (its own field: no other instance writes it).
pub async fn release(
    conn: &mut impl ConnectionLike,
    key: &str,
    id: &str,
) -> Result<(), LeaseError> {
    redis::cmd("HDEL")
        .arg(key)
        .arg(id)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Reads the script's reply.
fn parse(reply: &[String]) -> Option<Granted> {
    let (head, rest) = reply.split_at_checked(2)?;
    let grant = head[0].parse().ok()?;
    let now: u64 = head[1].parse().ok()?;
    let leases = rest
        .chunks_exact(2)
        .map(|pair| {
            let mut fields = pair[1].split(' ').map(str::parse::<u64>);
            let mut next = || fields.next()?.ok();
            let (lease, expires, borrowed, waiters) = (next()?, next()?, next()?, next()?);
            Some(LeaseRecord {
                id: pair[0].clone(),
                lease: usize::try_from(lease).ok()?,
                borrowed: usize::try_from(borrowed).ok()?,
                waiters: usize::try_from(waiters).ok()?,
                expires_in_ms: expires.saturating_sub(now),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Granted { grant, leases })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_reply_lists_the_grant_and_every_live_lease() {
        let reply = strings(&["3", "1000", "a", "3 1500 2 0", "b", "5 2000 5 4"]);
        let granted = parse(&reply).unwrap();
        assert_eq!(granted.grant, 3);
        assert_eq!(granted.leases.len(), 2);
        assert_eq!(
            granted.leases[1],
            LeaseRecord {
                id: "b".into(),
                lease: 5,
                borrowed: 5,
                waiters: 4,
                expires_in_ms: 1000
            }
        );
    }

    #[test]
    fn a_garbled_reply_is_refused() {
        assert_eq!(parse(&strings(&["3"])), None);
        assert_eq!(parse(&strings(&["3", "1", "a", "3 x 2 0"])), None);
        assert_eq!(parse(&strings(&["x", "1"])), None);
    }
}
