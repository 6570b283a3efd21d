//! A hierarchical timing wheel (Varghese and Lauck's scheme 7, laid out as
//! tokio's timer lays it out): each shard's deadlines, whatever their size.
//!
//! Time is counted in ticks of 2^20 ns (about 1 ms). Level 0 has 64 slots of
//! one tick each, level 1 64 slots of 64 ticks, and so on: eight levels
//! cover every `u64` nanosecond. An entry sits at the level of the highest
//! 6-bit digit in which its tick differs from the wheel's current tick, so
//! a deadline a day away is in a slot of about 4.9 hours (level 3) and moves
//! down a level each time its slot comes up: at most eight moves in its
//! life, each O(1). Finding the next occupied slot is a bit scan of one
//! 64-bit word per level. So a pass costs in proportion to the entries that
//! come up, not to the entries held, and a second-long timeout and a
//! day-long one share the structure at the same cost.
//!
//! Entries carry their exact deadline: one is handed out only once that
//! nanosecond has passed, and entries in the current tick that are not yet
//! due stay, to be looked at by the next pass.

use std::mem;

/// One deadline: session `slot` of generation `generation` must be looked at
/// from `deadline` (ns since the monitor's epoch) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) deadline: u64,
    pub(super) slot: u32,
    pub(super) generation: u32,
}

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 8;
/// A tick is 2^20 ns (1.05 ms): 44 bits of ticks, 8 levels of 6 bits.
const TICK_SHIFT: u32 = 20;

pub(super) struct Wheel {
    /// The tick up to which every slot has been handed out or cascaded.
    elapsed: u64,
    /// Bit `i` of `occupied[level]`: slot `i` of that level holds entries.
    occupied: [u64; LEVELS],
    slots: Box<[Vec<Entry>]>,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            elapsed: 0,
            occupied: [0; LEVELS],
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }
}

impl Wheel {
    /// Entries held, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds an entry. A deadline already past comes up at the next pass.
    pub(super) fn insert(&mut self, entry: Entry) {
        let tick = (entry.deadline >> TICK_SHIFT).max(self.elapsed);
        let level = level_for(self.elapsed, tick);
        let index = ((tick >> (BITS * level as u32)) as usize) & (SLOTS - 1);
        self.slots[level * SLOTS + index].push(entry);
        self.occupied[level] |= 1 << index;
        self.len += 1;
    }

    /// Moves every entry whose deadline is at or before `now` into `due`
    /// (in no particular order) and moves the wheel on to `now`.
    pub(super) fn expire(&mut self, now: u64, due: &mut Vec<Entry>) {
        let now_tick = now >> TICK_SHIFT;
        // Entries of the current tick that are not due yet: back in after.
        let mut not_yet = Vec::new();
        while let Some((level, index, start)) = self.next_slot() {
            if start > now_tick {
                break;
            }
            self.elapsed = start;
            self.occupied[level] &= !(1 << index);
            let entries = mem::take(&mut self.slots[level * SLOTS + index]);
            self.len -= entries.len();
            for entry in entries {
                if entry.deadline <= now {
                    due.push(entry);
                } else if level == 0 {
                    not_yet.push(entry);
                } else {
                    // Cascade: relative to `start`, it belongs to a lower level.
                    self.insert(entry);
                }
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
        for entry in not_yet {
            self.insert(entry);
        }
    }

    /// Keeps only the entries `keep` accepts (dropping stale ones).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.len = 0;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.retain(&mut keep);
            if slot.is_empty() {
                *slot = Vec::new();
                self.occupied[i / SLOTS] &= !(1 << (i % SLOTS));
            }
            self.len += slot.len();
        }
    }

    /// The earliest occupied slot: (level, index, its first tick).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let shift = BITS * level as u32;
            let digit = (self.elapsed >> shift) as usize & (SLOTS - 1);
            // Every occupied slot of a level is at or after the current digit:
            // entries at a level share the digits above it with `elapsed`.
            debug_assert_eq!(self.occupied[level] & ((1u64 << digit) - 1), 0, "level {level}");
            let bits = self.occupied[level] & (u64::MAX << digit);
            if bits != 0 {
                let index = bits.trailing_zeros() as usize;
                let above = shift + BITS;
                let high = if above >= 64 { 0 } else { self.elapsed & !((1u64 << above) - 1) };
                return Some((level, index, high | ((index as u64) << shift)));
            }
        }
        None
    }
}

/// The level of an entry for `tick` when the wheel is at `elapsed`: the
/// highest 6-bit digit in which they differ.
fn level_for(elapsed: u64, tick: u64) -> usize {
    let masked = (elapsed ^ tick) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / BITS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline: u64, slot: u32) -> Entry {
        Entry { deadline, slot, generation: 0 }
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn entries_come_up_exactly_when_due_at_every_scale() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut wheel = Wheel::default();
        let mut reference: Vec<Entry> = Vec::new();
        let mut now = 0u64;
        let mut due = Vec::new();
        for step in 0..20_000u32 {
            // Deadlines from a nanosecond to about a year ahead, and some past.
            let scale = rng.next() % 56;
            let ahead = rng.next() % (1u64 << scale).max(1);
            let deadline = if step % 17 == 0 { now.saturating_sub(ahead) } else { now + ahead };
            let e = entry(deadline, step);
            wheel.insert(e);
            reference.push(e);
            // Moves of every size, some zero.
            let scale = rng.next() % 48;
            now += rng.next() % (1u64 << scale).max(1);
            due.clear();
            wheel.expire(now, &mut due);
            let mut expected: Vec<Entry> = reference.iter().copied().filter(|e| e.deadline <= now).collect();
            reference.retain(|e| e.deadline > now);
            due.sort_by_key(|e| e.slot);
            expected.sort_by_key(|e| e.slot);
            assert_eq!(due, expected, "step {step}, now {now}");
            assert_eq!(wheel.len(), reference.len());
        }
        wheel.expire(u64::MAX, &mut due);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn nothing_is_early_within_a_tick() {
        let mut wheel = Wheel::default();
        let mut due = Vec::new();
        wheel.insert(entry(1_000_500, 1));
        wheel.expire(1_000_499, &mut due);
        assert!(due.is_empty());
        wheel.expire(1_000_500, &mut due);
        assert_eq!(due, vec![entry(1_000_500, 1)]);
    }

    #[test]
    fn retain_drops_entries_and_keeps_the_rest_in_order() {
        let mut wheel = Wheel::default();
        for i in 0..1000u32 {
            wheel.insert(entry(u64::from(i) << 25, i));
        }
        wheel.retain(|e| e.slot % 2 == 0);
        assert_eq!(wheel.len(), 500);
        let mut due = Vec::new();
        wheel.expire(u64::MAX, &mut due);
        assert_eq!(due.len(), 500);
        assert!(due.iter().all(|e| e.slot % 2 == 0));
    }
}
