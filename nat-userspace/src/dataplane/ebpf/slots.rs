//! Generation slots. Every published mapping and every sandbox endpoint owns a slot of
//! `NATD_GENERATIONS`; a flow remembers the slot and the generation it started with. When
//! a mapping or endpoint goes away (or changes), natd bumps its slot's generation and every
//! flow of it is dead on its next packet: no walk of the connection table, whatever its
//! size. Slots are handed out again only after a bump, so a new owner never inherits the
//! old owner's flows.
use std::{collections::HashMap, hash::Hash};

/// One kind of slot owner (mappings or endpoints) over its range of slots.
#[derive(Debug)]
pub struct SlotBook<K> {
    first: u32,
    len: u32,
    owners: HashMap<K, u32>,
    free: Vec<u32>,
    next: u32,
}

/// What to do in the kernel for one owner.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotChange<K> {
    /// A new owner took `slot`: bump its generation, zero its counters, then install it.
    Taken { owner: K, slot: u32 },
    /// An owner went away: bump the generation of `slot` (its flows die).
    Released { owner: K, slot: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {0} generation slots are in use")]
pub struct SlotsExhausted(pub u32);

impl<K: Eq + Hash + Clone> SlotBook<K> {
    pub fn new(first: u32, len: u32) -> Self {
        Self {
            first,
            len,
            owners: HashMap::new(),
            free: Vec::new(),
            next: first,
        }
    }

    /// The slots owners hold in the kernel already (after a restart): adopted as they are.
    /// A slot two owners hold (mappings whose hashed ids collided, before ids were kept
    /// with the records) stays with the first; the others take fresh slots at the next
    /// sync, so no slot is ever given out twice.
    pub fn adopt(&mut self, held: impl IntoIterator<Item = (K, u32)>) {
        let mut taken: std::collections::HashSet<u32> = self.owners.values().copied().collect();
        for (owner, slot) in held {
            if (self.first..self.first + self.len).contains(&slot) && taken.insert(slot) {
                self.owners.insert(owner, slot);
                self.next = self.next.max(slot + 1);
            }
        }
        self.free = (self.first..self.next).filter(|s| !taken.contains(s)).collect();
    }

    /// (slots held, slots in all).
    pub fn room(&self) -> (usize, usize) {
        (self.owners.len(), self.len as usize)
    }

    pub fn owners(&self) -> impl Iterator<Item = (&K, u32)> {
        self.owners.iter().map(|(k, s)| (k, *s))
    }

    pub fn slot(&self, owner: &K) -> Option<u32> {
        self.owners.get(owner).copied()
    }

    /// Brings the book to exactly `wanted` owners: releases first (their slots become
    /// free), then takes.
    pub fn sync(&mut self, wanted: &[K]) -> Result<Vec<SlotChange<K>>, SlotsExhausted> {
        let keep: std::collections::HashSet<&K> = wanted.iter().collect();
        let gone: Vec<K> = self
            .owners
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for owner in gone {
            changes.extend(self.release(&owner));
        }
        for owner in wanted {
            changes.extend(self.take(owner)?);
        }
        Ok(changes)
    }

    /// A slot for `owner` (None if it holds one already).
    pub fn take(&mut self, owner: &K) -> Result<Option<SlotChange<K>>, SlotsExhausted> {
        if self.owners.contains_key(owner) {
            return Ok(None);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.next < self.first + self.len => {
                self.next += 1;
                self.next - 1
            }
            None => return Err(SlotsExhausted(self.len)),
        };
        self.owners.insert(owner.clone(), slot);
        Ok(Some(SlotChange::Taken {
            owner: owner.clone(),
            slot,
        }))
    }

    /// Gives `owner`'s slot back (None if it held none).
    pub fn release(&mut self, owner: &K) -> Option<SlotChange<K>> {
        let slot = self.owners.remove(owner)?;
        self.free.push(slot);
        Some(SlotChange::Released {
            owner: owner.clone(),
            slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_held_twice_is_adopted_once() {
        let mut book = SlotBook::new(100, 4);
        book.adopt([("a", 101), ("b", 101), ("c", 102)]);
        assert_eq!((book.slot(&"a"), book.slot(&"b"), book.slot(&"c")), (Some(101), None, Some(102)));
        // b takes a slot nobody holds, and releasing a frees 101 once.
        let changes = book.sync(&["a", "b", "c"]).unwrap();
        assert_eq!(changes, [SlotChange::Taken { owner: "b", slot: 100 }]);
        book.release(&"a");
        book.release(&"a");
        assert_eq!(book.take(&"d").unwrap(), Some(SlotChange::Taken { owner: "d", slot: 101 }));
        assert_eq!(book.take(&"e").unwrap(), Some(SlotChange::Taken { owner: "e", slot: 103 }));
    }

    #[test]
    fn owners_get_slots_and_give_them_back() {
        let mut book = SlotBook::new(100, 3);
        let changes = book.sync(&["a", "b"]).unwrap();
        assert_eq!(
            changes,
            [
                SlotChange::Taken {
                    owner: "a",
                    slot: 100
                },
                SlotChange::Taken {
                    owner: "b",
                    slot: 101
                }
            ]
        );
        // Nothing changes, nothing to do.
        assert!(book.sync(&["a", "b"]).unwrap().is_empty());
        // b goes, c and d come: c takes b's slot back (released first), d a new one.
        let changes = book.sync(&["a", "c", "d"]).unwrap();
        assert_eq!(
            changes[0],
            SlotChange::Released {
                owner: "b",
                slot: 101
            }
        );
        assert!(changes.contains(&SlotChange::Taken {
            owner: "c",
            slot: 101
        }));
        assert!(changes.contains(&SlotChange::Taken {
            owner: "d",
            slot: 102
        }));
        assert_eq!(book.sync(&["a", "c", "d", "e"]).unwrap_err(), SlotsExhausted(3));
    }

    #[test]
    fn a_restarted_natd_keeps_the_slots_in_the_kernel() {
        let mut book = SlotBook::new(0, 10);
        book.adopt([("a", 4), ("b", 1), ("out of range", 50)]);
        assert_eq!(book.slot(&"a"), Some(4));
        assert!(book.sync(&["a", "b"]).unwrap().is_empty());
        // Free slots below the highest adopted one are used first.
        let changes = book.sync(&["a", "b", "c"]).unwrap();
        let SlotChange::Taken { slot, .. } = changes[0] else {
            panic!("{changes:?}")
        };
        assert!([0, 2, 3].contains(&slot), "{slot}");
    }
}
