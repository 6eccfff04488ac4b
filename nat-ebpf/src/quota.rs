//! Per-source quotas of the connection tables (`NatConfig`): how many pending flows (TCP
//! until its handshake completes, UDP and ICMP until answered) and promoted UDP/ICMP flows
//! one source may hold (`Family::quota_key`), counted in `NATD_QUOTA4/6`. The programs count up and
//! down; natd's expiry pass sets the counts to the live flows (what expired or was evicted
//! from the LRU counts no more).
use nat_common::SourceQuota;

use crate::{family::Family, lookup};

/// Which count of a source a quota bounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Pending flows (embryonic table).
    Pending,
    /// Promoted UDP/ICMP flows (established table).
    Promoted,
}

/// Counts one more flow of `src` (originator of a flow of entry kind `kind`), unless the source has `limit` of that kind already
/// (false: refused; 0: no limit). Racing CPUs may lose an increment, which only delays a
/// refusal by a flow.
#[inline(always)]
fn take<A: Family>(src: &A, kind: u8, count: Count, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let key = src.quota_key(kind);
    match A::quota().get_ptr_mut(&key) {
        // SAFETY: a pointer into a map value, updated in place.
        Some(q) => unsafe {
            let held = if count == Count::Pending {
                &mut (*q).embryonic
            } else {
                &mut (*q).promoted
            };
            if *held >= limit {
                return false;
            }
            *held += 1;
        },
        None => {
            let first = SourceQuota {
                embryonic: u32::from(count == Count::Pending),
                promoted: u32::from(count == Count::Promoted),
            };
            let _ = A::quota().insert(&key, &first, 0);
        }
    }
    true
}

/// Counts a new flow against its source's quota of pending flows; false (refused) when
/// the source has its quota, so a flood from one client cannot churn the embryonic table.
#[inline(never)]
pub fn admit<A: Family>(src: &A, kind: u8) -> bool {
    take(src, kind, Count::Pending, lookup::config().embryonic_per_source)
}

/// Whether a UDP or ICMP flow of `src` may move to the established table (its quota of
/// promoted flows). Counted only once it moved (`count_promoted`): a refused move must
/// not hold a place.
#[inline(always)]
pub fn promotion_room<A: Family>(src: &A, kind: u8) -> bool {
    let limit = lookup::config().promoted_per_source;
    // SAFETY: a pointer into a map value, one field read.
    limit == 0
        || A::quota()
            .get_ptr(&src.quota_key(kind))
            .is_none_or(|q| unsafe { (*q).promoted } < limit)
}

/// Counts a promoted flow (after `promotion_room` said yes and the flow moved).
#[inline(always)]
pub fn count_promoted<A: Family>(src: &A, kind: u8) {
    if lookup::config().promoted_per_source != 0 {
        take(src, kind, Count::Promoted, u32::MAX);
    }
}

/// The originator's count of pending flows goes down by one: its TCP handshake
/// completed, or its UDP/ICMP flow was answered (the quota bounds what a source has
/// pending, not what it has answered), or the flow was refused after all.
#[inline(never)]
pub fn release_embryonic<A: Family>(src: &A, kind: u8) {
    if lookup::config().embryonic_per_source == 0 {
        return;
    }
    if let Some(q) = A::quota().get_ptr_mut(&src.quota_key(kind)) {
        // SAFETY: as in `take`.
        unsafe {
            if (*q).embryonic > 0 {
                (*q).embryonic -= 1;
            }
        }
    }
}
