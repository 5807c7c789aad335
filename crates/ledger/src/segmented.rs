//! Growth without pauses: the ledger's record vectors and its id indexes.
//!
//! A `Vec` that doubles copies everything it holds, and a hash table that grows rehashes every
//! entry, both while the committer holds the ledger: at 2 million transfers that was a 350 ms
//! pause, paid by every request in flight (`examples/pause_probe.rs` measures it). Here:
//!
//! - [`Segmented`] stores records in segments of at most [`SEGMENT_LEN`]; only the first segment
//!   grows by doubling (so a small account history stays small), every later one is allocated at
//!   its full size once. No push ever copies more than half a segment.
//! - [`IdIndex`] grows a hash table incrementally: when the table is full, a table twice the size
//!   takes new entries and every insert moves [`INDEX_MOVES_PER_INSERT`] old entries across, so
//!   the move is over before the new table fills. Lookups look in both tables meanwhile.

use hashbrown::HashTable;

/// Elements per segment (a power of two).
pub const SEGMENT_LEN: usize = 4_096;
const SEGMENT_SHIFT: u32 = SEGMENT_LEN.trailing_zeros();

/// Entries moved from the old table to the new one per insert while an [`IdIndex`] grows.
pub const INDEX_MOVES_PER_INSERT: u32 = 4;

/// An append-mostly vector stored in segments, indexed like a slice.
#[derive(Debug)]
pub struct Segmented<T> {
    /// Every segment but the last is full ([`SEGMENT_LEN`] elements); the last is not empty unless
    /// it is the only one.
    segments: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Segmented<T> {
    fn default() -> Self {
        Segmented { segments: Vec::new(), len: 0 }
    }
}

impl<T> Segmented<T> {
    /// An empty vector (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many elements it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an element.
    #[inline]
    pub fn push(&mut self, value: T) {
        if let Some(last) = self.segments.last_mut() {
            if last.len() < last.capacity() {
                // Capacity never exceeds a segment, so this never reallocates.
                last.push(value);
                self.len += 1;
                return;
            }
        }
        self.push_growing(value);
    }

    #[cold]
    fn push_growing(&mut self, value: T) {
        match self.segments.last_mut() {
            Some(last) if last.len() < SEGMENT_LEN => {
                // Only the first segment grows by doubling, up to a whole segment.
                let grow = last.len().max(4).min(SEGMENT_LEN - last.len());
                last.reserve_exact(grow);
                last.push(value);
            }
            _ => {
                let mut segment =
                    if self.segments.is_empty() { Vec::new() } else { Vec::with_capacity(SEGMENT_LEN) };
                segment.push(value);
                self.segments.push(segment);
            }
        }
        self.len += 1;
        // The fast path relies on it: a segment never has room beyond SEGMENT_LEN.
        assert!(
            self.segments.last().is_some_and(|s| s.capacity() <= SEGMENT_LEN),
            "segment capacity is bounded"
        );
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T> {
        let last = self.segments.last_mut()?;
        let value = last.pop()?;
        if last.is_empty() && self.segments.len() > 1 {
            self.segments.pop();
        }
        self.len -= 1;
        Some(value)
    }

    /// The last element.
    pub fn last(&self) -> Option<&T> {
        self.segments.last().and_then(|s| s.last())
    }

    /// The element at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.segments.get(index >> SEGMENT_SHIFT).and_then(|s| s.get(index & (SEGMENT_LEN - 1)))
    }

    /// The element at `index`, mutably, if there is one.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.segments.get_mut(index >> SEGMENT_SHIFT).and_then(|s| s.get_mut(index & (SEGMENT_LEN - 1)))
    }

    /// Every element, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.segments.iter().flat_map(|s| s.iter())
    }

    /// The elements with indexes in `start..end`, in order.
    pub fn range(&self, start: usize, end: usize) -> impl DoubleEndedIterator<Item = &T> + '_ {
        assert!(start <= end && end <= self.len, "range {start}..{end} of {}", self.len);
        let segments =
            if start == end { 0..0 } else { start >> SEGMENT_SHIFT..((end - 1) >> SEGMENT_SHIFT) + 1 };
        segments.flat_map(move |k| {
            let base = k << SEGMENT_SHIFT;
            let (lo, hi) = (start.saturating_sub(base), (end - base).min(SEGMENT_LEN));
            self.segments[k][lo..hi].iter()
        })
    }

    /// The index of the first element for which `pred` is false, the elements being partitioned
    /// (every `true` before every `false`), as [`slice::partition_point`].
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Removes the first `count` whole segments (all of them if fewer), that is the first
    /// `count * SEGMENT_LEN` elements: how a window over an append-only sequence forgets its oldest
    /// part without moving the rest. Later indexes shift down by what was removed.
    pub fn remove_front_segments(&mut self, count: usize) {
        let count = count.min(self.segments.len());
        let removed: usize = self.segments.drain(..count).map(|s| s.len()).sum();
        self.len -= removed;
        // Every segment left but the last is still full, so indexing stays `index >> SEGMENT_SHIFT`.
        debug_assert!(self.segments.iter().rev().skip(1).all(|s| s.len() == SEGMENT_LEN));
        debug_assert_eq!(self.len, self.segments.iter().map(|s| s.len()).sum::<usize>());
    }

    /// Bytes allocated for elements (for memory estimates).
    pub fn allocated_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.capacity() * std::mem::size_of::<T>()).sum::<usize>()
            + self.segments.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

// One bounds check against `len` instead of two (the ledger indexes accounts a dozen times per
// transfer): every segment but the last is full, so `index < len` means that segment
// `index >> SEGMENT_SHIFT` exists and holds element `index & (SEGMENT_LEN - 1)`.
impl<T> std::ops::Index<usize> for Segmented<T> {
    type Output = T;
    #[inline]
    fn index(&self, index: usize) -> &T {
        assert!(index < self.len, "index {index} out of bounds ({})", self.len);
        // SAFETY: see above (`push` and `pop` keep every segment but the last full).
        unsafe {
            self.segments.get_unchecked(index >> SEGMENT_SHIFT).get_unchecked(index & (SEGMENT_LEN - 1))
        }
    }
}

impl<T> std::ops::IndexMut<usize> for Segmented<T> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        assert!(index < self.len, "index {index} out of bounds ({})", self.len);
        // SAFETY: as for `index`.
        unsafe {
            self.segments
                .get_unchecked_mut(index >> SEGMENT_SHIFT)
                .get_unchecked_mut(index & (SEGMENT_LEN - 1))
        }
    }
}

impl<'a, T> IntoIterator for &'a Segmented<T> {
    type Item = &'a T;
    type IntoIter = std::iter::FlatMap<
        std::slice::Iter<'a, Vec<T>>,
        std::slice::Iter<'a, T>,
        fn(&'a Vec<T>) -> std::slice::Iter<'a, T>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.segments.iter().flat_map(|s| s.iter())
    }
}

/// A hash index from record ids to record indexes (`u32`) that grows without rehashing everything
/// at once. The caller owns the records and tells the index how to hash the id at an index.
#[derive(Debug, Default)]
pub struct IdIndex {
    table: HashTable<u32>,
    /// While growing: the previous table, emptied into `table` a few entries per insert.
    old: HashTable<u32>,
    /// The next record index to move from `old` (moving is over once it reaches `move_end`).
    move_next: u32,
    /// Every index in `old` is below this.
    move_end: u32,
    /// One past the highest index stored (indexes are inserted in increasing order, every record
    /// below it is indexed).
    end: u32,
}

/// The smallest table an [`IdIndex`] grows to.
const INDEX_CAPACITY_MIN: usize = 1_024;

impl IdIndex {
    /// An empty index (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `capacity` ids (rebuilding an index whose size is known).
    pub fn with_capacity(capacity: usize) -> Self {
        IdIndex { table: HashTable::with_capacity(capacity), ..Self::default() }
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        // While moving, `old` also holds the copies already in `table` (below `move_next`).
        if self.old.is_empty() {
            self.table.len()
        } else {
            self.table.len() + self.old.len() - self.move_next as usize
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the tables have room for (for memory estimates).
    pub fn capacity(&self) -> usize {
        self.table.capacity() + self.old.capacity()
    }

    /// The index stored under `hash` for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let found = self.table.find(hash, |&i| eq(i));
        if found.is_some() || self.old.is_empty() {
            return found.copied();
        }
        self.old.find(hash, |&i| eq(i)).copied()
    }

    /// Inserts `index` under `hash`: the next record (every record before it is indexed, so
    /// `index` is at least one past the last one inserted). `hash_of` hashes the id of the record
    /// at an index.
    #[inline]
    pub fn insert(&mut self, hash: u64, index: u32, hash_of: impl Fn(u32) -> u64) {
        assert!(index >= self.end, "indexes are inserted in increasing order");
        self.end = index + 1;
        if self.move_next < self.move_end {
            self.move_some(&hash_of);
        } else if self.table.len() == self.table.capacity() {
            let capacity = (self.table.capacity() * 2).max(INDEX_CAPACITY_MIN);
            self.old = std::mem::replace(&mut self.table, HashTable::with_capacity(capacity));
            (self.move_next, self.move_end) = (0, index);
            self.move_some(&hash_of);
        }
        // The new table is twice the old one and the move ends after old/INDEX_MOVES_PER_INSERT
        // inserts, so inserting never makes it rehash.
        assert!(self.table.len() < self.table.capacity(), "an id index insert never rehashes");
        self.table.insert_unique(hash, index, |&i| hash_of(i));
    }

    /// Copies the next few indexes into the new table. Every record index below `move_end` is in
    /// `old` (every record is indexed), so no lookup is needed; `old` keeps its copies (lookups
    /// look in `table` first) and is dropped whole once the move is over.
    #[cold]
    fn move_some(&mut self, hash_of: &impl Fn(u32) -> u64) {
        let end = self.move_end.min(self.move_next.saturating_add(INDEX_MOVES_PER_INSERT));
        for i in self.move_next..end {
            let hash = hash_of(i);
            debug_assert!(self.old.find(hash, |&j| j == i).is_some(), "record {i} is indexed");
            self.table.insert_unique(hash, i, |&j| hash_of(j));
        }
        self.move_next = end;
        if self.move_next >= self.move_end {
            self.old = HashTable::new();
        }
    }

    /// Removes `index`, the last record (undoing a linked chain removes records last-first).
    pub fn remove_last(&mut self, hash: u64, index: u32) -> bool {
        assert_eq!(index + 1, self.end, "only the last index is removed");
        self.end = index;
        // Records at or above `index` are gone; any that come later are inserted into `table`.
        self.move_end = self.move_end.min(index);
        // A moved index is in both tables.
        let in_table = self.table.find_entry(hash, |&i| i == index).map(|e| e.remove()).is_ok();
        let in_old = self.old.find_entry(hash, |&i| i == index).map(|e| e.remove()).is_ok();
        let removed = in_table || in_old;
        if self.move_next >= self.move_end && self.old.capacity() > 0 {
            self.old = HashTable::new();
        }
        removed
    }

    /// Makes room for `additional` more ids at once (recovery, which knows how many are coming):
    /// finishes any move, then grows the table in one step.
    pub fn reserve(&mut self, additional: usize, hash_of: impl Fn(u32) -> u64) {
        while self.move_next < self.move_end {
            self.move_some(&hash_of);
        }
        self.table.reserve(additional, |&i| hash_of(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segmented_indexes_ranges_and_pops_like_a_vec() {
        let mut s = Segmented::new();
        let mut v = Vec::new();
        for i in 0..(3 * SEGMENT_LEN + 17) {
            s.push(i);
            v.push(i);
        }
        assert_eq!(s.len(), v.len());
        assert!(s.iter().eq(v.iter()));
        assert!(s.iter().rev().eq(v.iter().rev()));
        for (a, b) in [
            (0, 0),
            (0, 1),
            (5, SEGMENT_LEN),
            (SEGMENT_LEN - 1, SEGMENT_LEN + 1),
            (10, v.len()),
            (v.len(), v.len()),
        ] {
            assert!(s.range(a, b).eq(v[a..b].iter()), "{a}..{b}");
            assert!(s.range(a, b).rev().eq(v[a..b].iter().rev()), "{a}..{b} reversed");
        }
        assert_eq!(s.partition_point(|&x| x < 5_000), 5_000);
        while let Some(x) = s.pop() {
            assert_eq!(Some(x), v.pop());
            assert_eq!(s.len(), v.len());
            assert_eq!(s.last(), v.last());
        }
        assert!(s.is_empty() && s.get(0).is_none());
    }

    #[test]
    fn removing_front_segments_shifts_indexes_and_keeps_pushing() {
        let mut s = Segmented::new();
        for i in 0..(3 * SEGMENT_LEN + 5) {
            s.push(i);
        }
        s.remove_front_segments(2);
        assert_eq!(s.len(), SEGMENT_LEN + 5);
        assert_eq!(s[0], 2 * SEGMENT_LEN);
        assert_eq!(s.partition_point(|&x| x < 3 * SEGMENT_LEN), SEGMENT_LEN);
        for i in 0..SEGMENT_LEN {
            s.push(3 * SEGMENT_LEN + 5 + i);
        }
        assert!(s.iter().copied().eq(2 * SEGMENT_LEN..4 * SEGMENT_LEN + 5));
        assert!(s
            .range(SEGMENT_LEN - 1, SEGMENT_LEN + 2)
            .copied()
            .eq(3 * SEGMENT_LEN - 1..3 * SEGMENT_LEN + 2));
        s.remove_front_segments(10);
        assert!(s.is_empty() && s.get(0).is_none());
        s.push(7);
        assert_eq!((s.len(), s[0]), (1, 7));
    }

    fn h(i: u32) -> u64 {
        (i as u64 ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    proptest! {
        /// Whatever mix of inserts and last-record removals, the index answers like a map.
        #[test]
        fn id_index_grows_incrementally_and_finds_everything(ops in proptest::collection::vec(0u8..10, 1..6_000)) {
            let mut index = IdIndex::new();
            let mut records: Vec<u32> = Vec::new();
            for op in ops {
                if op == 0 && !records.is_empty() {
                    let i = records.pop().unwrap();
                    prop_assert!(index.remove_last(h(i), i));
                } else {
                    let i = records.len() as u32;
                    records.push(i);
                    index.insert(h(i), i, h);
                }
                prop_assert_eq!(index.len(), records.len());
            }
            for &i in &records {
                prop_assert_eq!(index.find(h(i), |j| j == i), Some(i));
            }
            let missing = records.len() as u32;
            prop_assert_eq!(index.find(h(missing), |j| j == missing), None);
        }
    }
}
