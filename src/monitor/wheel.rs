//! A hashed timing wheel (Varghese and Lauck's scheme 6): each shard's
//! deadlines, whatever their size.
//!
//! 1,024 slots of 2^26 ns (67 ms) make a revolution of 68.7 s. An entry goes
//! in the slot of its deadline, modulo the revolution; a pass looks at the
//! slots the clock went through since the last pass, hands out the entries
//! that are due and leaves the others, whose deadline is a revolution or
//! more away (or later in the slot now current), where they are. So a pass
//! costs in proportion to the entries in the slots it crosses: those coming
//! due, plus those of longer deadlines, each looked at once per revolution
//! (a one-day deadline 1,257 times, a few nanoseconds each, in order in
//! memory). Nothing is ever moved in bulk (a hierarchical wheel's cascades
//! move a whole higher-level slot at once), so when deadlines are spread
//! over time the work is spread the same way. A second-long timeout and a
//! day-long one share the structure.
//!
//! Entries carry their exact deadline: one is handed out only once that
//! nanosecond has passed.

/// One deadline: session `slot` of generation `generation` must be looked at
/// from `deadline` (ns since the monitor's epoch) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) deadline: u64,
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// A slot is 2^26 ns (67.1 ms).
const SLOT_SHIFT: u32 = 26;
const SLOTS: u64 = 1024;

#[derive(Default)]
pub(super) struct Wheel {
    /// `SLOTS` lists, allocated at the first insert.
    slots: Vec<Vec<Entry>>,
    /// The absolute slot number (deadline >> SLOT_SHIFT) of the last pass:
    /// looked at again by the next one, as it may hold entries not yet due.
    cursor: u64,
    len: usize,
}

impl Wheel {
    /// Entries held, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds an entry. A deadline already past comes up at the next pass.
    pub(super) fn insert(&mut self, entry: Entry) {
        if self.slots.is_empty() {
            self.slots = (0..SLOTS).map(|_| Vec::new()).collect();
        }
        let at = (entry.deadline >> SLOT_SHIFT).max(self.cursor);
        self.slots[(at % SLOTS) as usize].push(entry);
        self.len += 1;
    }

    /// Moves every entry whose deadline is at or before `now` into `due`
    /// (in no particular order) and moves the wheel on to `now`.
    pub(super) fn expire(&mut self, now: u64, due: &mut Vec<Entry>) {
        let now_slot = now >> SLOT_SHIFT;
        if self.slots.is_empty() || now_slot < self.cursor {
            return;
        }
        // A revolution or more since the last pass: every slot, once.
        let (from, to) =
            if now_slot - self.cursor >= SLOTS { (0, SLOTS - 1) } else { (self.cursor, now_slot) };
        for at in from..=to {
            let slot = &mut self.slots[(at % SLOTS) as usize];
            let before = slot.len();
            slot.retain(|e| {
                let keep = e.deadline > now;
                if !keep {
                    due.push(*e);
                }
                keep
            });
            self.len -= before - slot.len();
            // A burst (a million registrations at once) must not leave its
            // capacity behind in one slot for good.
            if slot.capacity() > 4 * slot.len() + 64 {
                slot.shrink_to(2 * slot.len());
            }
        }
        self.cursor = now_slot;
    }

    /// Keeps only the entries `keep` accepts (dropping stale ones).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.len = 0;
        for slot in &mut self.slots {
            slot.retain(&mut keep);
            if slot.capacity() > 4 * slot.len() + 64 {
                slot.shrink_to(2 * slot.len());
            }
            self.len += slot.len();
        }
    }
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
        let at = (5 << SLOT_SHIFT) + 500;
        wheel.insert(entry(at, 1));
        wheel.expire(at - 1, &mut due);
        assert!(due.is_empty());
        wheel.expire(at, &mut due);
        assert_eq!(due, vec![entry(at, 1)]);
    }

    /// A pass looks only at the slots the clock went through since the
    /// last one: the cursor follows the clock, so entries a revolution or
    /// more away are not looked at by every pass.
    #[test]
    fn passes_look_only_at_the_slots_crossed() {
        let mut wheel = Wheel::default();
        let far = (100 * SLOTS) << SLOT_SHIFT;
        wheel.insert(entry(far, 1));
        let mut due = Vec::new();
        for pass in 1..=3 * SLOTS {
            let now = pass << SLOT_SHIFT;
            wheel.expire(now, &mut due);
            assert_eq!(wheel.cursor, now >> SLOT_SHIFT);
        }
        assert!(due.is_empty());
        assert_eq!(wheel.len(), 1);
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
