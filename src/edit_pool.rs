//! The edit pool: pruned variants held as their edits, never as models. Two tiers, each an LRU
//! bounded in bytes: the device tier (factors on the serving device, in its dtype: what a
//! batch multiplies by) above the host tier (the parsed file in host memory), and the object
//! store below both. A variant evicted from the device tier keeps its host copy, and coming
//! back is a copy to the device, not a read of the store. An edit a running batch holds stays
//! alive (it is shared) until the batch lets it go. Only called from blocking threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use eigenprune_engine::edit::Edit;

/// Counters for /metrics.
#[derive(Default)]
pub struct PoolStats {
    /// Lookups the device tier answered.
    pub hits: AtomicU64,
    /// Lookups the host tier answered (copied up to the device).
    pub host_hits: AtomicU64,
    /// Edits read from the object store.
    pub loads: AtomicU64,
    /// Edits pushed out of the device tier (they stay in the host tier while it has room).
    pub evictions: AtomicU64,
}

struct Entry {
    id: String,
    edit: Arc<Edit>,
    bytes: u64,
}

/// One tier: most recently used last.
#[derive(Default)]
struct Tier {
    entries: Vec<Entry>,
    bytes: u64,
}

impl Tier {
    fn take(&mut self, id: &str) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        let e = self.entries.remove(i);
        self.bytes -= e.bytes;
        Some(e)
    }

    /// Adds `e` as the most recent; returns how many older entries left to stay in `budget`
    /// (the newest stays even alone over it).
    fn put(&mut self, e: Entry, budget: u64) -> usize {
        self.take(&e.id);
        self.bytes += e.bytes;
        self.entries.push(e);
        let mut evicted = 0;
        while self.bytes > budget && self.entries.len() > 1 {
            let old = self.entries.remove(0);
            self.bytes -= old.bytes;
            evicted += 1;
        }
        evicted
    }
}

pub struct EditPool {
    device: Device,
    dtype: DType,
    device_budget: u64,
    host_budget: u64,
    device_tier: Mutex<Tier>,
    host_tier: Mutex<Tier>,
    pub stats: PoolStats,
}

/// What the pool holds and has done, for /metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolUsage {
    pub device_bytes: u64,
    pub device_edits: usize,
    pub host_bytes: u64,
    pub host_edits: usize,
    pub hits: u64,
    pub host_hits: u64,
    pub loads: u64,
    pub evictions: u64,
}

impl EditPool {
    pub fn new(device: Device, dtype: DType, device_budget: u64, host_budget: u64) -> Self {
        Self {
            device,
            dtype,
            device_budget,
            host_budget,
            device_tier: Mutex::default(),
            host_tier: Mutex::default(),
            stats: PoolStats::default(),
        }
    }

    /// The variant's edit on the device, if either tier holds it (a host-tier edit is copied
    /// up first).
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Arc<Edit>>> {
        {
            let mut tier = self.device_tier.lock().expect("edit pool lock");
            if let Some(e) = tier.take(id) {
                let edit = e.edit.clone();
                tier.put(e, self.device_budget);
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(edit));
            }
        }
        let host = {
            let mut tier = self.host_tier.lock().expect("edit pool lock");
            let Some(e) = tier.take(id) else {
                return Ok(None);
            };
            let edit = e.edit.clone();
            tier.put(e, self.host_budget);
            edit
        };
        self.stats.host_hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(self.to_device(id, &host)?))
    }

    /// Holds a variant's edit read from the object store (parsed into host memory) in both
    /// tiers; returns it on the device.
    pub fn insert(&self, id: &str, host: Edit) -> anyhow::Result<Arc<Edit>> {
        let host = Arc::new(host);
        anyhow::ensure!(
            host.finetuned.is_empty(),
            "variant {id} is fine-tuned: a full model, not an edit"
        );
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        self.host_tier.lock().expect("edit pool lock").put(
            Entry {
                id: id.to_string(),
                bytes: host.bytes(),
                edit: host.clone(),
            },
            self.host_budget,
        );
        self.to_device(id, &host)
    }

    fn to_device(&self, id: &str, host: &Edit) -> anyhow::Result<Arc<Edit>> {
        let edit = Arc::new(host.to(&self.device, self.dtype)?);
        let evicted = self.device_tier.lock().expect("edit pool lock").put(
            Entry {
                id: id.to_string(),
                bytes: edit.bytes(),
                edit: edit.clone(),
            },
            self.device_budget,
        );
        self.stats
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        Ok(edit)
    }

    /// Forgets a variant (deleted) in both tiers.
    pub fn remove(&self, id: &str) {
        self.device_tier.lock().expect("edit pool lock").take(id);
        self.host_tier.lock().expect("edit pool lock").take(id);
    }

    /// Whether the device tier holds `id`.
    pub fn is_resident(&self, id: &str) -> bool {
        let tier = self.device_tier.lock().expect("edit pool lock");
        tier.entries.iter().any(|e| e.id == id)
    }

    pub fn usage(&self) -> PoolUsage {
        let d = self.device_tier.lock().expect("edit pool lock");
        let h = self.host_tier.lock().expect("edit pool lock");
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PoolUsage {
            device_bytes: d.bytes,
            device_edits: d.entries.len(),
            host_bytes: h.bytes,
            host_edits: h.entries.len(),
            hits: n(&self.stats.hits),
            host_hits: n(&self.stats.host_hits),
            loads: n(&self.stats.loads),
            evictions: n(&self.stats.evictions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use eigenprune_engine::edit::MatrixEdit;
    use eigenprune_engine::trace::Component;

    /// A rank-`rank` edit of one 8x8 map: (8 + 8) * rank f32s, as read from its file.
    fn edit_file(rank: usize) -> Edit {
        let t = |r, c| Tensor::ones((r, c), DType::F32, &Device::Cpu).unwrap();
        Edit {
            matrices: vec![MatrixEdit {
                layer: 0,
                component: Component::Q,
                a: t(rank, 8),
                b: t(8, rank),
                bias_delta: None,
            }],
            ..Default::default()
        }
        .to_bytes()
        .and_then(|b| Edit::from_bytes(&b, &Device::Cpu))
        .unwrap()
    }

    #[test]
    fn tiers_are_bounded_in_bytes_and_the_host_tier_refills_the_device() {
        // Each edit is 64 f32s = 256 bytes: the device tier holds 2, the host tier 3.
        let pool = EditPool::new(Device::Cpu, DType::F32, 512, 768);
        for id in ["a", "b", "c"] {
            pool.insert(id, edit_file(4)).unwrap();
        }
        let u = pool.usage();
        assert_eq!((u.device_edits, u.device_bytes), (2, 512));
        assert_eq!((u.host_edits, u.host_bytes), (3, 768));
        assert!(!pool.is_resident("a") && pool.is_resident("b") && pool.is_resident("c"));
        assert_eq!(pool.stats.evictions.load(Ordering::Relaxed), 1);
        // "a" comes back from the host tier, pushing out the least recent ("b").
        assert!(pool.get("a").unwrap().is_some());
        assert_eq!(pool.stats.host_hits.load(Ordering::Relaxed), 1);
        assert!(pool.is_resident("a") && !pool.is_resident("b"));
        assert!(pool.get("c").unwrap().is_some());
        assert_eq!(pool.stats.hits.load(Ordering::Relaxed), 1);
        // A fourth pushes the least recent host copy ("b") out of the host tier too.
        pool.insert("d", edit_file(4)).unwrap();
        assert!(pool.get("b").unwrap().is_none());
        pool.remove("c");
        assert!(pool.get("c").unwrap().is_none());
        assert_eq!(pool.stats.loads.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn an_edit_over_the_budget_is_still_served_alone() {
        let pool = EditPool::new(Device::Cpu, DType::F32, 100, 100);
        pool.insert("a", edit_file(4)).unwrap();
        pool.insert("big", edit_file(8)).unwrap();
        let u = pool.usage();
        assert_eq!((u.device_edits, u.host_edits), (1, 1));
        assert!(pool.is_resident("big"));
    }
}
