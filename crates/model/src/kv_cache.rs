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

use std::collections::VecDeque;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvLayout {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// f32s of K (or of V) in one block, all layers.
    fn block_floats(&self) -> usize {
        self.n_layers * self.block_size * self.kv_dim()
    }
}

/// Physical storage. Blocks are created lazily up to `capacity`, then recycled.
pub struct KvPool {
    layout: KvLayout,
    capacity: usize,
    /// One allocation per block, so memory is exactly what was created: [n_layers][block_size][kv_dim]
    k: Vec<Box<[f32]>>,
    v: Vec<Box<[f32]>>,
    free: Vec<u32>,
    created: usize,
}

impl KvPool {
    pub fn new(layout: KvLayout, capacity_blocks: usize) -> Self {
        assert!(layout.block_size > 0 && layout.block_size <= MAX_BLOCK_SIZE);
        Self {
            layout,
            capacity: capacity_blocks,
            k: Vec::new(),
            v: Vec::new(),
            free: Vec::new(),
            created: 0,
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    fn alloc(&mut self) -> Result<u32> {
        if let Some(b) = self.free.pop() {
            return Ok(b);
        }
        if self.created >= self.capacity {
            return Err(ModelError::CacheFull {
                needed: 1,
                free: 0,
                capacity: self.capacity,
            });
        }
        let n = self.layout.block_floats();
        self.k.push(vec![0.0; n].into_boxed_slice());
        self.v.push(vec![0.0; n].into_boxed_slice());
        self.created += 1;
        Ok((self.created - 1) as u32)
    }

    fn release(&mut self, block: u32) {
        self.free.push(block);
    }

    /// Blocks ever created (the pool's high-water mark).
    pub fn blocks_created(&self) -> usize {
        self.created
    }

    /// Bytes of K plus V in one block.
    pub fn block_bytes(&self) -> usize {
        2 * self.layout.block_floats() * std::mem::size_of::<f32>()
    }

    pub fn blocks_in_use(&self) -> usize {
        self.created - self.free.len()
    }

    /// Bytes of K and V storage the pool has allocated (in use or free for reuse).
    pub fn bytes_allocated(&self) -> usize {
        self.created * self.block_bytes()
    }

    /// Offset of (layer, slot) inside a block.
    fn offset(&self, layer: usize, slot: usize) -> usize {
        let l = &self.layout;
        (layer * l.block_size + slot) * l.kv_dim()
    }

    pub fn write(&mut self, at: (u32, usize), layer: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(layer, at.1);
        let d = self.layout.kv_dim();
        self.k[at.0 as usize][o..o + d].copy_from_slice(k);
        self.v[at.0 as usize][o..o + d].copy_from_slice(v);
    }

    /// K and V of `n` consecutive slots of one block in one layer: `[n, kv_dim]` each.
    pub fn block_slots(
        &self,
        block: u32,
        layer: usize,
        first: usize,
        n: usize,
    ) -> (&[f32], &[f32]) {
        let o = self.offset(layer, first);
        let len = n * self.layout.kv_dim();
        let b = block as usize;
        (&self.k[b][o..o + len], &self.v[b][o..o + len])
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
        let available = pool.free.len() + (pool.capacity - pool.created);
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
