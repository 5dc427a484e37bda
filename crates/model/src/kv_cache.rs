//! The KV cache as a pool of fixed-size blocks, and each sequence's table of blocks.
//!
//! A block holds `block_size` consecutive positions of K and V for every layer. A sequence maps
//! its logical blocks (position / block_size) to physical ones. With a sliding window W, a query
//! at position p reads keys p−W+1 … p, so once every future query is past a block, the block
//! goes back to the pool: Mistral's rolling buffer, expressed in pages. A sequence then holds at
//! most ⌈W/B⌉ + 1 blocks between steps however long it runs.
//!
//! Worked example, W = 4, B = 2: after 7 tokens (positions 0…6) the next query (position 7)
//! needs keys 4…7, i.e. logical blocks 2 and 3; blocks 0 and 1 have been recycled.
//!
//! Blocks are reference-counted so that sequences can share them (prefix caching). A full
//! block can be registered under the hash of its tokens and of everything before them
//! ([`block_hashes`]); when its last holder lets it go it is kept, evictable, in least-recently
//! used order, so a later prompt with the same beginning can take it back instead of
//! recomputing it. Fresh blocks come from the free list first, then from the pool's unused
//! capacity, and only then by evicting the oldest cached block.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bora_kernels::attention::KvElem;
use half::f16;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub kv_type: KvType,
}

/// How the cache stores K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    /// Half the memory, and half the bytes decode's attention reads; K and V rounded to f16
    /// as llama.cpp's default cache does.
    F16,
    /// Exact: what the transformers references compute.
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        })
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => Err(format!("unknown KV cache type {s:?} (f16 or f32)")),
        }
    }
}

/// One element type's K and V storage: one allocation per block.
pub(crate) struct Planes<E> {
    k: Vec<Box<[E]>>,
    v: Vec<Box<[E]>>,
}

impl<E: KvElem> Planes<E> {
    fn with_capacity(blocks: usize) -> Self {
        Self {
            k: Vec::with_capacity(blocks),
            v: Vec::with_capacity(blocks),
        }
    }

    fn push_block(&mut self, n: usize) {
        self.k.push(vec![E::default(); n].into_boxed_slice());
        self.v.push(vec![E::default(); n].into_boxed_slice());
    }

    fn write(&mut self, block: usize, o: usize, k: &[f32], v: &[f32]) {
        E::store(k, &mut self.k[block][o..o + k.len()]);
        E::store(v, &mut self.v[block][o..o + v.len()]);
    }
}

pub(crate) enum Store {
    F32(Planes<f32>),
    F16(Planes<f16>),
}

/// A type the pool can store K and V as, and hand back typed.
pub(crate) trait CacheElem: KvElem {
    fn planes(store: &Store) -> Option<&Planes<Self>>;
}

impl CacheElem for f32 {
    fn planes(store: &Store) -> Option<&Planes<f32>> {
        match store {
            Store::F32(p) => Some(p),
            Store::F16(_) => None,
        }
    }
}

impl CacheElem for f16 {
    fn planes(store: &Store) -> Option<&Planes<f16>> {
        match store {
            Store::F16(p) => Some(p),
            Store::F32(_) => None,
        }
    }
}

impl KvLayout {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Elements of K (or of V) in one block, all layers.
    fn block_elems(&self) -> usize {
        self.n_layers * self.block_size * self.kv_dim()
    }

    /// Bytes of K plus V in one block.
    pub fn block_bytes(&self) -> usize {
        2 * self.block_elems() * self.kv_type.bytes()
    }
}

/// Identifies a full block by its tokens and all tokens before it: 128 bits, so two different
/// prefixes colliding is out of the question in practice (~n²/2¹²⁸).
pub type BlockHash = u128;

/// The hash of a full block of `tokens` that follows the block hashed `parent` (0 for the
/// first block): two independently keyed 64-bit SipHashes of both.
pub fn next_block_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    };
    ((half(1) as u128) << 64) | half(2) as u128
}

/// The chained hashes of the full blocks of `tokens`: entry i covers tokens `..(i+1)·B`.
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out: Vec<BlockHash> = Vec::with_capacity(tokens.len() / block_size);
    for chunk in tokens.chunks_exact(block_size) {
        out.push(next_block_hash(out.last().copied().unwrap_or(0), chunk));
    }
    out
}

/// Physical storage. Blocks are created lazily up to `capacity`, then recycled.
pub struct KvPool {
    layout: KvLayout,
    capacity: usize,
    /// One allocation per block, so memory is exactly what was created:
    /// [n_layers][n_kv_heads][block_size][head_dim], so that one head's run of keys is
    /// contiguous for attention, which reads one KV head at a time.
    store: Store,
    /// Holders of each block.
    refs: Vec<u32>,
    /// Unheld blocks with nothing worth keeping.
    free: Vec<u32>,
    created: usize,
    /// Registered full blocks, held or not.
    cached: HashMap<BlockHash, u32>,
    /// The hash each block is registered under.
    hash_of: Vec<Option<BlockHash>>,
    /// Unheld registered blocks by the tick they were let go: the oldest is evicted first.
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    tick: u64,
}

impl KvPool {
    pub fn new(layout: KvLayout, capacity_blocks: usize) -> Self {
        assert!(layout.block_size > 0 && layout.block_size <= MAX_BLOCK_SIZE);
        // The per-block lists are reserved up front (a few bytes a block), so that opening a
        // block during decode allocates only its storage, not a list's regrowth.
        let n = capacity_blocks.min(1 << 16);
        Self {
            layout,
            capacity: capacity_blocks,
            store: match layout.kv_type {
                KvType::F32 => Store::F32(Planes::with_capacity(n)),
                KvType::F16 => Store::F16(Planes::with_capacity(n)),
            },
            refs: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            created: 0,
            cached: HashMap::new(),
            hash_of: Vec::with_capacity(n),
            evictable: BTreeMap::new(),
            released_at: Vec::with_capacity(n),
            tick: 0,
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    fn alloc(&mut self) -> Result<u32> {
        let b = if let Some(b) = self.free.pop() {
            b
        } else if self.created < self.capacity {
            let n = self.layout.block_elems();
            match &mut self.store {
                Store::F32(p) => p.push_block(n),
                Store::F16(p) => p.push_block(n),
            }
            self.refs.push(0);
            self.hash_of.push(None);
            self.released_at.push(0);
            self.created += 1;
            (self.created - 1) as u32
        } else if let Some((_, b)) = self.evictable.pop_first() {
            if let Some(h) = self.hash_of[b as usize].take() {
                self.cached.remove(&h);
            }
            b
        } else {
            return Err(ModelError::CacheFull {
                needed: 1,
                free: 0,
                capacity: self.capacity,
            });
        };
        self.refs[b as usize] = 1;
        Ok(b)
    }

    /// Lets go of one hold on `block`; a registered block stays cached until evicted.
    fn release(&mut self, block: u32) {
        let i = block as usize;
        debug_assert!(self.refs[i] > 0, "block {block} released twice");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.hash_of[i].is_some() {
            self.tick += 1;
            self.released_at[i] = self.tick;
            self.evictable.insert(self.tick, block);
        } else {
            self.free.push(block);
        }
    }

    /// Registers a full, written block under `hash`, so later prompts can share it. A hash
    /// already registered keeps its first block; this one stays private.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        let i = block as usize;
        if self.hash_of[i].is_some() || self.cached.contains_key(&hash) {
            return;
        }
        self.cached.insert(hash, block);
        self.hash_of[i] = Some(hash);
    }

    /// Whether a block with `hash` is cached (held or evictable).
    pub fn is_cached(&self, hash: &BlockHash) -> bool {
        self.cached.contains_key(hash)
    }

    /// Takes a hold on the cached block with `hash`.
    fn acquire(&mut self, hash: &BlockHash) -> Option<u32> {
        let b = *self.cached.get(hash)?;
        let i = b as usize;
        if self.refs[i] == 0 {
            self.evictable.remove(&self.released_at[i]);
        }
        self.refs[i] += 1;
        Some(b)
    }

    /// Blocks a sequence could still get: free, never created, or cached but unheld.
    pub fn available(&self) -> usize {
        self.free.len() + (self.capacity - self.created) + self.evictable.len()
    }

    /// Unheld blocks kept for their contents.
    pub fn blocks_cached(&self) -> usize {
        self.evictable.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks ever created (the pool's high-water mark).
    pub fn blocks_created(&self) -> usize {
        self.created
    }

    /// Bytes of K plus V in one block.
    pub fn block_bytes(&self) -> usize {
        self.layout.block_bytes()
    }

    /// Blocks some sequence holds.
    pub fn blocks_in_use(&self) -> usize {
        self.created - self.free.len() - self.evictable.len()
    }

    /// Bytes of K and V storage the pool has allocated (in use or free for reuse).
    pub fn bytes_allocated(&self) -> usize {
        self.created * self.block_bytes()
    }

    /// Offset of (layer, KV head, slot) inside a block.
    fn offset(&self, layer: usize, kv_head: usize, slot: usize) -> usize {
        let l = &self.layout;
        ((layer * l.n_kv_heads + kv_head) * l.block_size + slot) * l.head_dim
    }

    /// Stores one position's K and V (`[kv_dim]` each, heads in order) at `at` = (block, slot).
    pub fn write(&mut self, at: (u32, usize), layer: usize, k: &[f32], v: &[f32]) {
        let hd = self.layout.head_dim;
        debug_assert_eq!(k.len(), self.layout.kv_dim());
        for (h, (kh, vh)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            let o = self.offset(layer, h, at.1);
            match &mut self.store {
                Store::F32(p) => p.write(at.0 as usize, o, kh, vh),
                Store::F16(p) => p.write(at.0 as usize, o, kh, vh),
            }
        }
    }

    /// K and V of one KV head at `n` consecutive slots from `first` of one block in one
    /// layer, `[n, head_dim]` each and contiguous, as the pool stores them (`E` must be the
    /// layout's [`KvType`]).
    pub(crate) fn head_slots<E: CacheElem>(
        &self,
        block: u32,
        layer: usize,
        kv_head: usize,
        first: usize,
        n: usize,
    ) -> (&[E], &[E]) {
        let o = self.offset(layer, kv_head, first);
        let len = n * self.layout.head_dim;
        let b = block as usize;
        let p = E::planes(&self.store).expect("K and V read as the type they are stored as");
        (&p.k[b][o..o + len], &p.v[b][o..o + len])
    }
}

/// Largest block size; attention keeps one block's scores on the stack.
pub const MAX_BLOCK_SIZE: usize = 256;

/// One sequence's view of the pool: which physical block holds each logical block.
#[derive(Debug, Default)]
pub struct SeqKv {
    /// Logical index of `blocks[0]`; earlier blocks were recycled by the window.
    first_block: usize,
    blocks: VecDeque<u32>,
    /// Positions written so far; the next token goes to position `len`.
    len: usize,
}

impl SeqKv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks_held(&self) -> usize {
        self.blocks.len()
    }

    /// Makes room for `n_new` positions from `len` on. Blocks that no query of this step or
    /// later can see are recycled first.
    pub fn prepare(
        &mut self,
        pool: &mut KvPool,
        n_new: usize,
        window: Option<usize>,
    ) -> Result<()> {
        self.recycle(pool, window);
        let b = pool.layout.block_size;
        let last = self.len + n_new;
        let needed_blocks = last.div_ceil(b);
        let have = self.first_block + self.blocks.len();
        let missing = needed_blocks.saturating_sub(have);
        let available = pool.available();
        if missing > available {
            return Err(ModelError::CacheFull {
                needed: missing,
                free: available,
                capacity: pool.capacity,
            });
        }
        for _ in 0..missing {
            self.blocks.push_back(pool.alloc()?);
        }
        Ok(())
    }

    /// Records that `n_new` positions were written, then recycles what the window left behind.
    pub fn advance(&mut self, pool: &mut KvPool, n_new: usize, window: Option<usize>) {
        self.len += n_new;
        self.recycle(pool, window);
    }

    /// Frees every block wholly before the oldest key the next query (at `len`) can see.
    fn recycle(&mut self, pool: &mut KvPool, window: Option<usize>) {
        let Some(w) = window else { return };
        let oldest_visible = (self.len + 1).saturating_sub(w);
        let first_needed = oldest_visible / pool.layout.block_size;
        while self.first_block < first_needed {
            match self.blocks.pop_front() {
                Some(b) => pool.release(b),
                None => {
                    self.first_block = first_needed;
                    break;
                }
            }
            self.first_block += 1;
        }
    }

    /// Starts an empty sequence on cached blocks: the full blocks whose chained hashes are
    /// `hashes` hold its first `hashes.len() · B` positions, and of them it takes those from
    /// logical block `first` on (a window needs no older ones). Returns false, holding
    /// nothing, when one of them is no longer cached.
    pub fn adopt(&mut self, pool: &mut KvPool, hashes: &[BlockHash], first: usize) -> bool {
        debug_assert!(self.is_empty() && self.blocks.is_empty());
        for h in hashes.get(first..).unwrap_or(&[]) {
            match pool.acquire(h) {
                Some(b) => self.blocks.push_back(b),
                None => {
                    self.free(pool);
                    return false;
                }
            }
        }
        self.first_block = first;
        self.len = hashes.len() * pool.layout.block_size;
        true
    }

    /// The physical block holding logical block `logical`, if this sequence holds it.
    pub fn block_at(&self, logical: usize) -> Option<u32> {
        let i = logical.checked_sub(self.first_block)?;
        self.blocks.get(i).copied()
    }

    /// How many blocks `prepare(n_new)` would take from the pool.
    pub fn blocks_needed(&self, block_size: usize, n_new: usize) -> usize {
        let have = self.first_block + self.blocks.len();
        (self.len + n_new).div_ceil(block_size).saturating_sub(have)
    }

    /// (physical block, slot) of position `pos`, which must be held.
    pub fn locate(&self, pos: usize, block_size: usize) -> (u32, usize) {
        let logical = pos / block_size;
        (self.blocks[logical - self.first_block], pos % block_size)
    }

    /// Forgets every position from `n` on, so the sequence can take another continuation.
    /// Returns false (and holds nothing) when the window has already dropped keys that
    /// position `n` would need; the caller then starts over.
    pub fn truncate(&mut self, pool: &mut KvPool, n: usize, window: Option<usize>) -> bool {
        if n >= self.len {
            return true;
        }
        let b = pool.layout.block_size;
        let oldest_needed = window.map_or(0, |w| (n + 1).saturating_sub(w));
        if oldest_needed / b < self.first_block {
            self.free(pool);
            return n == 0;
        }
        let keep = n.div_ceil(b).saturating_sub(self.first_block);
        while self.blocks.len() > keep {
            if let Some(blk) = self.blocks.pop_back() {
                pool.release(blk);
            }
        }
        self.len = n;
        true
    }

    /// Returns every block to the pool.
    pub fn free(&mut self, pool: &mut KvPool) {
        for b in self.blocks.drain(..) {
            pool.release(b);
        }
        self.first_block = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout {
            n_layers: 2,
            n_kv_heads: 1,
            head_dim: 4,
            block_size: 2,
            kv_type: KvType::F32,
        }
    }

    #[test]
    fn window_recycles_blocks_as_in_the_worked_example() {
        let mut pool = KvPool::new(layout(), 64);
        let mut seq = SeqKv::new();
        for _ in 0..7 {
            seq.prepare(&mut pool, 1, Some(4)).unwrap();
            seq.advance(&mut pool, 1, Some(4));
        }
        // Next query at 7 sees 4..=7: logical blocks 2 and 3; block 3 not allocated yet.
        assert_eq!(seq.first_block, 2);
        assert_eq!(seq.blocks_held(), 2);
        for _ in 0..1000 {
            seq.prepare(&mut pool, 1, Some(4)).unwrap();
            assert!(seq.blocks_held() <= 3);
            seq.advance(&mut pool, 1, Some(4));
        }
        assert!(pool.created <= 4, "pool grew to {} blocks", pool.created);
    }

    #[test]
    fn truncation_keeps_what_later_positions_can_see() {
        let mut pool = KvPool::new(layout(), 64);
        let mut seq = SeqKv::new();
        seq.prepare(&mut pool, 9, None).unwrap();
        seq.advance(&mut pool, 9, None);
        assert_eq!(seq.blocks_held(), 5);
        assert!(seq.truncate(&mut pool, 4, None));
        assert_eq!((seq.len(), seq.blocks_held()), (4, 2));
        assert_eq!(pool.blocks_in_use(), 2);
        // Under a window of 4 the cache has dropped early blocks: going back before them
        // is refused and the sequence starts over empty.
        let mut w = SeqKv::new();
        for _ in 0..12 {
            w.prepare(&mut pool, 1, Some(4)).unwrap();
            w.advance(&mut pool, 1, Some(4));
        }
        // Position 11 sees keys 8..=11 (block 4 on): kept. Position 10 would need key 7.
        assert!(w.truncate(&mut pool, 11, Some(4)));
        assert_eq!(w.len(), 11);
        assert!(!w.truncate(&mut pool, 2, Some(4)));
        assert_eq!((w.len(), w.blocks_held()), (0, 0));
    }

    #[test]
    fn shared_blocks_are_counted_kept_after_release_and_evicted_oldest_first() {
        let mut pool = KvPool::new(layout(), 4);
        let tokens: Vec<u32> = (0..6).collect();
        let hashes = block_hashes(&tokens, 2);
        assert_eq!(hashes.len(), 3);
        assert_ne!(hashes[0], block_hashes(&[0, 2], 2)[0]);
        // Same tokens after another beginning: another hash.
        assert_ne!(block_hashes(&[9, 9, 2, 3], 2)[1], hashes[1]);
        let mut a = SeqKv::new();
        a.prepare(&mut pool, 6, None).unwrap();
        a.advance(&mut pool, 6, None);
        for (i, h) in hashes.iter().enumerate() {
            pool.register(a.block_at(i).unwrap(), *h);
        }
        // b shares a's first two blocks: no new block is taken.
        let mut b = SeqKv::new();
        assert!(b.adopt(&mut pool, &hashes[..2], 0));
        assert_eq!((b.len(), pool.blocks_in_use()), (4, 3));
        a.free(&mut pool);
        assert_eq!((pool.blocks_in_use(), pool.blocks_cached()), (2, 1));
        b.free(&mut pool);
        assert_eq!((pool.blocks_in_use(), pool.blocks_cached()), (0, 3));
        assert_eq!(pool.available(), 4);
        // Two fresh blocks: the one never created, then the oldest released (block 2 of a).
        let mut c = SeqKv::new();
        c.prepare(&mut pool, 4, None).unwrap();
        assert!(!pool.is_cached(&hashes[2]));
        assert!(pool.is_cached(&hashes[0]) && pool.is_cached(&hashes[1]));
        // A block that is gone cannot be adopted; nothing stays held.
        let mut d = SeqKv::new();
        assert!(!d.adopt(&mut pool, &hashes, 0));
        assert_eq!((d.len(), d.blocks_held(), pool.blocks_in_use()), (0, 0, 2));
    }

    #[test]
    fn full_attention_keeps_every_block_and_pool_refuses_past_capacity() {
        let mut pool = KvPool::new(layout(), 3);
        let mut seq = SeqKv::new();
        seq.prepare(&mut pool, 6, None).unwrap();
        seq.advance(&mut pool, 6, None);
        assert_eq!(seq.blocks_held(), 3);
        let e = seq.prepare(&mut pool, 1, None).unwrap_err();
        assert!(matches!(e, ModelError::CacheFull { .. }));
        seq.free(&mut pool);
        assert_eq!(pool.blocks_in_use(), 0);
    }
}
