//! The embedded store's verifiable journal: the Merkle tree over the journal, signed checkpoints,
//! witnesses and proofs (see the `puhui-verifiable` crate and docs/VERIFIABILITY.md).
//!
//! Key decision: the tree's leaf value is each entry's chained BLAKE3 hash, which the journal
//! computes anyway, so the committer only notes 48 bytes per entry (that hash, the ledger timestamp
//! and the file offset) while it encodes the group; after the group's `fdatasync` it hands them to
//! the `puhui-merkle` thread, which turns each into its RFC 6962 leaf hash (one SHA-256 block),
//! appends it to the tree and signs checkpoints (every N entries or T ms), each appended durably to
//! `checkpoints.log` (and the witness file) before it is served. So hashing and signing stay off
//! the write path, and a checkpoint only ever covers durable entries.
//!
//! At start-up a loader thread rebuilds the tree from a hash-checked scan of the whole journal while
//! recovery loads the snapshot and replays the tail; every stored (and witnessed) checkpoint is then
//! checked against the tree, and the store refuses to start on a mismatch.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use puhui_journal::JournalPosition;
use puhui_verifiable::journal_tree::check_against_tree;
use puhui_verifiable::tree_file;
use puhui_verifiable::{
    Checkpoint, CheckpointLog, ConsistencyProof, Error, InclusionProof, JournalTree, NodeKey, PublicKey,
    TransparencyLog, CHECKPOINT_LOG_FILE,
};

use crate::{EmbeddedStore, Inner, StoreError, StoreOptions};

/// Group commits queued for the merkle thread before the committer waits (back-pressure).
const MERKLE_QUEUE_GROUPS_MAX: usize = 64;
/// Leaves appended to the tree per write-lock hold (bounds how long a proof waits).
const TREE_APPEND_CHUNK: usize = 4_096;

/// Entries a new leaf buffer is first sized for. Small on purpose: the committer takes a new buffer
/// whenever the merkle thread has not handed one back yet (often, under HTTP load, where it runs
/// at nice 19 behind the request handlers), and a 16,384-entry (786 KB) first reservation made it
/// fault in fresh pages for a ~20-entry group: 1.7 % of the server's CPU at 31,000 requests/s.
/// Larger groups grow the buffer; reused buffers keep their size.
const PENDING_LEAVES_CAPACITY: usize = 256;

/// What the merkle thread needs of one journal entry: 48 bytes, not the entry (the committer
/// never copies bodies: the leaf value is the chained hash the journal computed anyway).
#[derive(Clone, Copy)]
struct PendingLeaf {
    /// The entry's chained BLAKE3 hash (the merkle thread hashes it into the RFC 6962 leaf hash).
    entry_hash: [u8; 32],
    /// The entry's ledger timestamp (for the entry index).
    timestamp_ns: u64,
    /// The entry's file offset (for the entry index).
    offset: u64,
}

/// The entries of one group commit, noted by the committer as it encodes them.
#[derive(Default)]
pub(crate) struct PendingLeaves {
    leaves: Vec<PendingLeaf>,
    /// The sequence number of the first entry (the tree's size when they are appended).
    first_seq: u64,
    /// The journal position after these entries (a frame boundary), set once they are durable.
    end: Option<JournalPosition>,
}

impl PendingLeaves {
    /// Whether no entry was noted.
    pub(crate) fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Empties the buffer, keeping its capacity for the next group.
    fn clear(&mut self) {
        self.leaves.clear();
        self.end = None;
    }

    /// Records the durable journal position after these entries.
    pub(crate) fn set_end(&mut self, position: JournalPosition) {
        assert_eq!(
            position.entries,
            self.first_seq + self.leaves.len() as u64,
            "the leaves end where the journal does"
        );
        self.end = Some(position);
    }

    /// Notes entry `seq` (file `offset`, ledger timestamp `timestamp_ns`, chained hash
    /// `entry_hash`) once it is encoded. Entries must be noted in order, without gaps.
    pub(crate) fn push(&mut self, seq: u64, entry_hash: [u8; 32], timestamp_ns: u64, offset: u64) {
        if self.leaves.is_empty() {
            self.leaves.reserve(PENDING_LEAVES_CAPACITY);
            self.first_seq = seq;
        }
        assert_eq!(seq, self.first_seq + self.leaves.len() as u64, "entries are noted in order");
        self.leaves.push(PendingLeaf { entry_hash, timestamp_ns, offset });
    }
}

pub(crate) enum ToMerkle {
    /// Entries that are durable, in order.
    Entries(PendingLeaves),
    /// Make a checkpoint now (if the tree grew) and reply with the latest.
    Checkpoint(SyncSender<Result<Checkpoint, Error>>),
    /// Reply once everything sent before is in the tree.
    Barrier(SyncSender<()>),
    /// Final checkpoint, then stop.
    Shutdown,
}

/// The store's verifiable-journal state.
pub(crate) struct Verifiable {
    log: Arc<RwLock<TransparencyLog>>,
    journal: File,
    public_key: PublicKey,
    tx: SyncSender<ToMerkle>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Emptied leaf buffers handed back by the merkle thread: the committer reuses them instead of
    /// allocating (and the kernel zeroing) a megabyte or so per group commit.
    spare: Arc<Mutex<Vec<PendingLeaves>>>,
}

/// Emptied leaf buffers kept for reuse.
const SPARE_BUFFERS_MAX: usize = 4;

/// What the loader built.
pub(crate) struct Loaded {
    pub(crate) tree: JournalTree,
    /// Whether the tree file was used (only the entries after it were hashed).
    pub(crate) from_file: bool,
    /// Why a tree file that exists was not used.
    pub(crate) file_error: Option<String>,
    pub(crate) took: Duration,
}

/// Builds the journal's tree in a thread while recovery runs: from the tree file plus the entries
/// after it, or (no usable file) from a full scan.
pub(crate) struct Loader(JoinHandle<Result<Loaded, Error>>);

impl Loader {
    pub(crate) fn spawn(dir: &Path, journal: &Path) -> Result<Loader, StoreError> {
        let (dir, path) = (dir.to_path_buf(), journal.to_path_buf());
        std::thread::Builder::new()
            .name("puhui-merkle-load".into())
            .spawn(move || {
                let started = Instant::now();
                let mut file_error = None;
                match tree_file::read_tree_file(&dir) {
                    Ok(Some(start)) => match JournalTree::build_from(&path, Some(start), |_| Ok(())) {
                        Ok(tree) => {
                            return Ok(Loaded { tree, from_file: true, file_error, took: started.elapsed() })
                        }
                        Err(e) => file_error = Some(format!("the tree file does not fit the journal: {e}")),
                    },
                    Ok(None) => {}
                    Err(e) => file_error = Some(e.to_string()),
                }
                let tree = JournalTree::build(&path, |_| Ok(()))?;
                Ok(Loaded { tree, from_file: false, file_error, took: started.elapsed() })
            })
            .map(Loader)
            .map_err(|e| StoreError::Io(format!("starting the merkle loader: {e}")))
    }

    pub(crate) fn join(self) -> Result<Loaded, StoreError> {
        self.0
            .join()
            .map_err(|_| StoreError::Io("the merkle loader panicked".into()))?
            .map_err(to_store_error)
    }
}

pub(crate) fn to_store_error(e: Error) -> StoreError {
    match e {
        Error::Io(e) => StoreError::Io(e),
        other => StoreError::Corrupt(other.to_string()),
    }
}

/// What [`start`] needs from `open_with`.
pub(crate) struct StartArgs<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) journal: &'a Path,
    pub(crate) loaded: Loaded,
    pub(crate) entries: u64,
    pub(crate) options: &'a StoreOptions,
}

/// Checks the loaded tree against the recovered journal and the stored and witnessed checkpoints,
/// loads (or makes) the node key and opens the checkpoint files. The thread starts in [`spawn`].
pub(crate) fn start(args: StartArgs<'_>) -> Result<(Verifiable, MerkleThread), StoreError> {
    let StartArgs { dir, journal, loaded, entries, options } = args;
    let from_file = loaded.from_file;
    let loaded = loaded.tree;
    if loaded.tree.size() != entries {
        return Err(StoreError::Corrupt(format!(
            "the journal changed during start-up: {} entries hashed, {entries} recovered",
            loaded.tree.size()
        )));
    }
    let key = NodeKey::load_or_generate(dir).map_err(to_store_error)?;
    let (log_file, stored) = CheckpointLog::open(&dir.join(CHECKPOINT_LOG_FILE)).map_err(to_store_error)?;
    for c in &stored {
        c.verify_signature(&key.public_key()).map_err(to_store_error)?;
    }
    let witness = match &options.witness_file {
        Some(path) => {
            let (w, witnessed) = CheckpointLog::open(path).map_err(to_store_error)?;
            // The journal must extend everything the witness holds (lost or rewritten entries are
            // refused here rather than signed over).
            for c in witnessed.iter().filter(|c| c.key_id == key.public_key().key_id()) {
                check_against_tree(c, &loaded.tree, "witnessed").map_err(to_store_error)?;
            }
            Some((w, witnessed.last().map_or(0, |c| c.size)))
        }
        None => None,
    };
    let position = JournalPosition {
        entries: loaded.summary.entries,
        len_bytes: loaded.summary.valid_len_bytes,
        last_hash: loaded.summary.last_hash,
    };
    let mut log = match TransparencyLog::new(loaded.tree, loaded.index, stored.clone()) {
        Ok(log) => log,
        Err(_) if from_file => {
            // The tree file disagrees with the checkpoints: trust only the journal itself.
            let full = JournalTree::build(journal, |_| Ok(())).map_err(to_store_error)?;
            TransparencyLog::new(full.tree, full.index, stored).map_err(to_store_error)?
        }
        Err(e) => return Err(to_store_error(e)),
    };
    log.reserve_touched(options.journal_capacity_entries.saturating_sub(log.size()));
    let journal_file =
        File::open(journal).map_err(|e| StoreError::Io(format!("{}: {e}", journal.display())))?;
    let (tx, rx) = mpsc::sync_channel(MERKLE_QUEUE_GROUPS_MAX);
    let public_key = key.public_key();
    let log = Arc::new(RwLock::new(log));
    let spare = Arc::new(Mutex::new(Vec::new()));
    let thread = MerkleThread {
        spare: Arc::clone(&spare),
        dir: dir.to_path_buf(),
        position,
        log: Arc::clone(&log),
        rx,
        key,
        checkpoints: log_file,
        witness,
        every_entries: options.checkpoint_every_entries,
        every: Duration::from_millis(options.checkpoint_every_ms),
        hashes: Vec::with_capacity(TREE_APPEND_CHUNK),
    };
    Ok((Verifiable { log, journal: journal_file, public_key, tx, thread: Mutex::new(None), spare }, thread))
}

/// The merkle thread's state, before it is spawned.
pub(crate) struct MerkleThread {
    spare: Arc<Mutex<Vec<PendingLeaves>>>,
    dir: std::path::PathBuf,
    /// The durable journal position the tree has reached.
    position: JournalPosition,
    log: Arc<RwLock<TransparencyLog>>,
    rx: Receiver<ToMerkle>,
    key: NodeKey,
    checkpoints: CheckpointLog,
    witness: Option<(CheckpointLog, u64)>,
    every_entries: u64,
    every: Duration,
    /// Leaf hashes of the chunk being appended (reused).
    hashes: Vec<puhui_verifiable::Hash>,
}

/// Starts the merkle thread (once `inner` exists: it reports into the store's stats).
pub(crate) fn spawn(inner: &Arc<Inner>, thread: MerkleThread) -> Result<(), StoreError> {
    let verifiable = inner.verifiable.as_ref().expect("spawned only for a verifiable store");
    let inner_for_thread = Arc::clone(inner);
    let handle = std::thread::Builder::new()
        .name("puhui-merkle".into())
        .spawn(move || thread.run(&inner_for_thread))
        .map_err(|e| StoreError::Io(format!("starting the merkle thread: {e}")))?;
    *verifiable.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    Ok(())
}

impl MerkleThread {
    fn run(mut self, inner: &Inner) {
        lower_priority();
        let mut last_at = Instant::now();
        loop {
            let (size, checkpointed) = self.sizes();
            let wait = if size > checkpointed && !self.every.is_zero() {
                self.every.saturating_sub(last_at.elapsed())
            } else {
                Duration::from_millis(crate::EXPIRY_POLL_MS_MAX * 10)
            };
            let message = match self.rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(ToMerkle::Shutdown),
            };
            match message {
                Some(ToMerkle::Entries(mut pending)) => {
                    // Hash outside the lock (one SHA-256 block per entry: the leaf value is the
                    // entry's chained hash) into this thread's own buffer, so the committer's leaf
                    // buffer is only read here; append in chunks so proofs are not held up.
                    assert_eq!(self.sizes().0, pending.first_seq, "groups reach the tree in order");
                    for chunk in pending.leaves.chunks(TREE_APPEND_CHUNK) {
                        leaf_hashes(chunk, &mut self.hashes);
                        let mut log = self.log.write().unwrap_or_else(|p| p.into_inner());
                        log.append_batch(
                            &self.hashes,
                            chunk.iter().map(|leaf| (leaf.timestamp_ns, leaf.offset)),
                        );
                    }
                    if let Some(end) = pending.end {
                        self.position = end;
                    }
                    pending.clear();
                    let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
                    if spare.len() < SPARE_BUFFERS_MAX {
                        spare.push(pending);
                    }
                    drop(spare);
                    let (size, checkpointed) = self.sizes();
                    if self.every_entries > 0 && size - checkpointed >= self.every_entries {
                        let _ = self.checkpoint(inner);
                        last_at = Instant::now();
                    }
                }
                Some(ToMerkle::Checkpoint(reply)) => {
                    let _ = reply.send(self.checkpoint(inner));
                    last_at = Instant::now();
                }
                Some(ToMerkle::Barrier(reply)) => {
                    let _ = reply.send(());
                }
                Some(ToMerkle::Shutdown) => {
                    let _ = self.checkpoint(inner);
                    self.save_tree(inner);
                    return;
                }
                None => {}
            }
            let (size, checkpointed) = self.sizes();
            if size > checkpointed && !self.every.is_zero() && last_at.elapsed() >= self.every {
                let _ = self.checkpoint(inner);
                last_at = Instant::now();
            }
        }
    }

    /// Saves the tree file so that the next start hashes only newer entries.
    fn save_tree(&self, inner: &Inner) {
        let log = self.log.read().unwrap_or_else(|p| p.into_inner());
        if log.size() != self.position.entries {
            return;
        }
        if tree_file::write_tree_file(&self.dir, &self.position, log.tree(), log.index()).is_err() {
            inner.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (tree size, latest checkpoint size).
    fn sizes(&self) -> (u64, u64) {
        let log = self.log.read().unwrap_or_else(|p| p.into_inner());
        (log.size(), log.latest_checkpoint().map_or(0, |c| c.size))
    }

    /// Signs the current tree if it grew, appends the checkpoint durably to the log (and the
    /// witness), then serves it. Returns the latest checkpoint.
    fn checkpoint(&mut self, inner: &Inner) -> Result<Checkpoint, Error> {
        let (size, root, latest) = {
            let log = self.log.read().unwrap_or_else(|p| p.into_inner());
            (log.size(), log.tree().root(), log.latest_checkpoint().cloned())
        };
        match latest {
            Some(latest) if latest.size >= size => return Ok(latest),
            None if size == 0 => return Err(Error::NoCheckpoint),
            _ => {}
        }
        let now = inner.clock.now_ns();
        let checkpoint = Checkpoint::sign(&self.key, size, root, now);
        if let Err(e) = self.checkpoints.append(&checkpoint) {
            inner.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        if let Some((witness, witnessed_size)) = &mut self.witness {
            if *witnessed_size < size {
                match witness.append(&checkpoint) {
                    Ok(()) => *witnessed_size = size,
                    Err(_) => {
                        inner.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.log.write().unwrap_or_else(|p| p.into_inner()).push_checkpoint(checkpoint.clone())?;
        inner.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(checkpoint)
    }
}

/// The RFC 6962 leaf hashes of `leaves` (each over the entry's chained hash) into `out`, two at a
/// time: independent hashes, interleaved on the SHA unit.
fn leaf_hashes(leaves: &[PendingLeaf], out: &mut Vec<puhui_verifiable::Hash>) {
    out.clear();
    let mut pairs = leaves.chunks_exact(2);
    for pair in &mut pairs {
        let (a, b) = puhui_verifiable::entry_leaf_hash_x2(&pair[0].entry_hash, &pair[1].entry_hash);
        out.extend([a, b]);
    }
    out.extend(pairs.remainder().iter().map(|leaf| puhui_verifiable::entry_leaf_hash(&leaf.entry_hash)));
}

/// Nice value of the merkle thread: hashing yields the CPU to the committer and callers, and
/// catches up while the committer waits on `fdatasync` (the bounded queue stops it from falling
/// behind for long).
const MERKLE_THREAD_NICE: i32 = 19;

fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, MERKLE_THREAD_NICE);
    }
}

impl Verifiable {
    pub(crate) fn sender(&self) -> &SyncSender<ToMerkle> {
        &self.tx
    }

    /// An empty leaf buffer for the next group commit (a reused one when there is one).
    pub(crate) fn buffer(&self) -> PendingLeaves {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    /// Stops the merkle thread after a final checkpoint (the committer has stopped).
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(ToMerkle::Shutdown);
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }

    fn barrier(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(ToMerkle::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// The verifiable journal: checkpoints and proofs. What the HTTP endpoints call:
///
/// | endpoint | call |
/// |---|---|
/// | `GET /v1/journal/checkpoints/latest` | [`EmbeddedStore::latest_checkpoint`] |
/// | `GET /v1/journal/checkpoints/{size}` | [`EmbeddedStore::checkpoint`] |
/// | `GET /v1/transfers/{id}/proof[?checkpoint=SIZE]` | [`EmbeddedStore::inclusion_proof_for_transfer`] |
/// | `GET /v1/journal/consistency?from=A&to=B` | [`EmbeddedStore::consistency`] |
/// | `GET /v1/journal/public-key` | [`EmbeddedStore::public_key`] |
///
/// Every result serialises to the documented JSON with `serde_json` (the proof types implement
/// `Serialize`); errors are [`puhui_verifiable::Error`] (map `Disabled`/`NoCheckpoint`/
/// `*NotFound` to 404, `NotCheckpointed` to 409 or 404 with a retry hint, `InvalidRange` to 400,
/// the rest to 500).
impl EmbeddedStore {
    fn verifiable(&self) -> Result<&Verifiable, Error> {
        self.inner.verifiable.as_ref().ok_or(Error::Disabled)
    }

    /// The node's public key (checkpoints are signed with it).
    pub fn public_key(&self) -> Result<PublicKey, Error> {
        Ok(self.verifiable()?.public_key)
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Checkpoint, Error> {
        let log = self.verifiable()?.log.read().unwrap_or_else(|p| p.into_inner());
        log.latest_checkpoint().cloned().ok_or(Error::NoCheckpoint)
    }

    /// The signed checkpoint of tree size `size`.
    pub fn checkpoint(&self, size: u64) -> Result<Checkpoint, Error> {
        let log = self.verifiable()?.log.read().unwrap_or_else(|p| p.into_inner());
        log.checkpoint(size).cloned()
    }

    /// Every signed checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let log = self.verifiable()?.log.read().unwrap_or_else(|p| p.into_inner());
        Ok(log.checkpoints().to_vec())
    }

    /// Up to `max` signed checkpoints of size above `size`, oldest first (what a witness that
    /// holds the checkpoint of `size` has not seen yet).
    pub fn checkpoints_after(&self, size: u64, max: usize) -> Result<Vec<Checkpoint>, Error> {
        let log = self.verifiable()?.log.read().unwrap_or_else(|p| p.into_inner());
        let all = log.checkpoints();
        let from = all.partition_point(|c| c.size <= size);
        Ok(all[from..].iter().take(max).cloned().collect())
    }

    /// Makes a checkpoint of every entry durable so far (if any is not yet covered) and returns the
    /// latest checkpoint. Checkpoints are otherwise made every `checkpoint_every_entries` entries or
    /// `checkpoint_every_ms` milliseconds.
    pub fn checkpoint_now(&self) -> Result<Checkpoint, Error> {
        let v = self.verifiable()?;
        let (tx, rx) = mpsc::sync_channel(1);
        v.tx.send(ToMerkle::Checkpoint(tx)).map_err(|_| Error::Io("the store is shut down".into()))?;
        rx.recv().map_err(|_| Error::Io("the store shut down before checkpointing".into()))?
    }

    /// The inclusion proof of the journal entry that recorded transfer `id` (applied, or failed and
    /// recorded), against the checkpoint of size `checkpoint_size` (default: the latest). A transfer
    /// newer than that checkpoint gives [`Error::NotCheckpointed`]: retry after the next checkpoint
    /// (or call [`EmbeddedStore::checkpoint_now`]).
    pub fn inclusion_proof_for_transfer(
        &self,
        id: &str,
        checkpoint_size: Option<u64>,
    ) -> Result<InclusionProof, Error> {
        let v = self.verifiable()?;
        let timestamp_ns = self
            .read(|l| l.transfer(id).map(|t| t.timestamp_ns))
            .ok_or_else(|| Error::TransferNotFound(id.to_string()))?;
        let found = {
            let log = v.log.read().unwrap_or_else(|p| p.into_inner());
            log.find_transfer(&v.journal, id, timestamp_ns)
        };
        let (seq, leaf) = match found {
            Ok(f) => f,
            Err(Error::TransferNotFound(_)) => {
                // Durable, but the merkle thread may not have hashed it yet.
                v.barrier();
                let log = v.log.read().unwrap_or_else(|p| p.into_inner());
                log.find_transfer(&v.journal, id, timestamp_ns)?
            }
            Err(e) => return Err(e),
        };
        let log = v.log.read().unwrap_or_else(|p| p.into_inner());
        log.inclusion_proof(seq, leaf, checkpoint_size)
    }

    /// The inclusion proof of journal entry `seq` (a risk decision record, say) against checkpoint
    /// `checkpoint_size` (default: the latest).
    pub fn inclusion_proof_for_entry(
        &self,
        seq: u64,
        checkpoint_size: Option<u64>,
    ) -> Result<InclusionProof, Error> {
        let v = self.verifiable()?;
        let read = || {
            let log = v.log.read().unwrap_or_else(|p| p.into_inner());
            log.read_leaf(&v.journal, seq)
        };
        let leaf = match read() {
            Ok(leaf) => leaf,
            Err(Error::EntryNotFound { .. }) if seq < self.stats().entries.load(Ordering::Relaxed) => {
                // Durable, but the merkle thread may not have hashed it yet.
                v.barrier();
                read()?
            }
            Err(e) => return Err(e),
        };
        let log = v.log.read().unwrap_or_else(|p| p.into_inner());
        log.inclusion_proof(seq, leaf, checkpoint_size)
    }

    /// The consistency proof between the signed checkpoints of sizes `from` and `to`.
    pub fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, Error> {
        let log = self.verifiable()?.log.read().unwrap_or_else(|p| p.into_inner());
        log.consistency(from, to)
    }

    /// Heap bytes of the Merkle tree, entry index and checkpoints (0 when switched off).
    pub fn verifiable_heap_bytes(&self) -> usize {
        self.inner
            .verifiable
            .as_ref()
            .map_or(0, |v| v.log.read().unwrap_or_else(|p| p.into_inner()).heap_bytes())
    }
}
