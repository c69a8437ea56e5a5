//! Where the parquet sink's files go and how they get there: a local
//! directory (fsync, rename into place, directory fsync) or S3-compatible
//! storage through `object_store` (a spool file, then one PUT or a
//! multipart upload), the listing of an hour's committed names, and the
//! spool files of processes that are gone.

use super::*;

/// Files up to this size are uploaded in one PUT; larger ones in parts of
/// this size (S3 wants at least 5 MiB for every part but the last).
pub(super) const UPLOAD_PART: u64 = 8 * 1024 * 1024;
/// The region an S3-compatible server is asked for when none is set.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Where committed files go.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A local directory.
    Local(PathBuf),
    /// S3-compatible object storage.
    S3(S3Location),
}

/// An `s3://bucket/prefix` path and how to reach it.
#[derive(Clone)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without a leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; AWS when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Local directory where files are written before their upload.
    pub spool: PathBuf,
}

impl std::fmt::Debug for S3Location {
    /// Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

impl S3Location {
    /// `s3://bucket/prefix` -> (bucket, prefix); `None` unless the path
    /// starts with `s3://` and names a bucket.
    pub fn parse_path(path: &str) -> Option<(String, String)> {
        let rest = path.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| (bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }

    pub(super) fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        // The runtime retries and opens the breaker itself: the client
        // tries a request at most three times, and gives up on a peer
        // that does not answer, rather than stalling the sink for minutes.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let options = ClientOptions::new()
            .with_timeout(Duration::from_secs(30))
            .with_connect_timeout(Duration::from_secs(5));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(endpoint) = &self.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = b.build().map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    }
}

pub(super) fn io(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::transient(ConnectorError::io(
        format!("{what} `{}`", path.display()),
        e,
    ))
}

/// Encoding and file I/O (fsync included) block: on a multi-thread
/// runtime (`dab run`) the worker hands its other tasks to another thread
/// meanwhile; elsewhere (a current-thread runtime in tests) it runs inline.
pub(super) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    // `path: out` has the empty parent ``: that is the working directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot fsync", dir, e))
}

pub(super) fn pq(what: &str, path: &Path, e: parquet::errors::ParquetError) -> SinkError {
    SinkError::transient(ConnectorError::Other(format!(
        "{what} `{}`: {e}",
        path.display()
    )))
}

/// `mkdir -p`, then fsync every directory it may have made (each is an
/// entry of its parent), up to `root`: or a crash could lose a committed
/// file's whole partition.
pub(super) fn create_dirs(dir: &Path, root: &Path) -> Result<(), SinkError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    for parent in dir.ancestors().skip(1) {
        sync_dir(parent)?;
        if parent == root || parent.as_os_str().is_empty() {
            break;
        }
    }
    Ok(())
}

/// Uploads the local file `tmp` as `key`: one PUT when it is small, else a
/// multipart upload, aborted if any part fails. Either way S3 shows the
/// object only once all of it is there.
pub(super) async fn upload(
    store: &dyn ObjectStore,
    bucket: &str,
    tmp: &Path,
    key: &ObjectPath,
) -> Result<(), SinkError> {
    let failed = |e: object_store::Error| {
        SinkError::transient(ConnectorError::Other(format!(
            "cannot upload `s3://{bucket}/{key}`: {e}"
        )))
    };
    let len = std::fs::metadata(tmp)
        .map_err(|e| io("cannot read", tmp, e))?
        .len();
    if len <= UPLOAD_PART {
        let bytes = blocking(|| std::fs::read(tmp)).map_err(|e| io("cannot read", tmp, e))?;
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(failed)?;
        return Ok(());
    }
    let mut file = File::open(tmp).map_err(|e| io("cannot read", tmp, e))?;
    let mut up = store.put_multipart(key).await.map_err(failed)?;
    let parts = async {
        loop {
            let mut part = Vec::with_capacity(UPLOAD_PART as usize);
            blocking(|| (&mut file).take(UPLOAD_PART).read_to_end(&mut part))
                .map_err(|e| io("cannot read", tmp, e))?;
            if part.is_empty() {
                break;
            }
            up.put_part(PutPayload::from(part)).await.map_err(failed)?;
        }
        up.complete().await.map_err(failed).map(drop)
    }
    .await;
    if parts.is_err() {
        // An aborted upload is never visible; one left open would only
        // cost storage until the bucket's lifecycle rule removes it.
        let _ = up.abort().await;
    }
    parts
}

/// What a commit needs of the sink, apart from it: the sink holds the
/// open writers, which may not be shared across threads, and a commit
/// awaits an upload.
pub(super) struct Committer {
    pub(super) store: Option<Arc<dyn ObjectStore>>,
    pub(super) storage: Storage,
    pub(super) stats: Arc<ParquetStats>,
}

impl Committer {
    /// Writes the footer and puts the file under its final name: fsync,
    /// rename and directory fsync, or an upload. On error the temporary
    /// file is removed. What a file of a topic partition holds, once it is
    /// committed.
    pub(super) async fn commit(
        &self,
        f: OpenFile,
    ) -> Result<Option<(positions::Key, i64, i64)>, SinkError> {
        let name = f.final_name();
        let held = f.key.positions().zip(f.range).map(|(k, (a, b))| (k, a, b));
        let OpenFile {
            tmp,
            rel,
            writer,
            rows,
            ..
        } = f;
        let done = match (&self.storage, &self.store) {
            (Storage::Local(root), _) => {
                let dest = root.join(&rel).join(&name);
                blocking(|| {
                    writer
                        .into_inner()
                        .map_err(|e| pq("cannot finish", &tmp, e))
                        .and_then(|file| file.sync_all().map_err(|e| io("cannot fsync", &tmp, e)))
                        .and_then(|()| {
                            std::fs::rename(&tmp, &dest).map_err(|e| io("cannot rename", &tmp, e))
                        })
                        .and_then(|()| dest.parent().map_or(Ok(()), sync_dir))
                })
            }
            (Storage::S3(loc), Some(store)) => {
                let key = ObjectPath::from(object_key(&loc.prefix, &rel, &name));
                match blocking(|| {
                    writer
                        .into_inner()
                        .map_err(|e| pq("cannot finish", &tmp, e))
                }) {
                    Ok(file) => {
                        drop(file);
                        let up = upload(store.as_ref(), &loc.bucket, &tmp, &key).await;
                        // The spool file is not needed once uploaded.
                        let _ = std::fs::remove_file(&tmp);
                        up
                    }
                    Err(e) => Err(e),
                }
            }
            (Storage::S3(loc), None) => Err(SinkError::permanent(ConnectorError::Other(format!(
                "no object store for `s3://{}`",
                loc.bucket
            )))),
        };
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.stats.files_committed.fetch_add(1, Ordering::Relaxed);
        self.stats.rows_committed.fetch_add(rows, Ordering::Relaxed);
        Ok(held)
    }
}

/// Removes the temporary files (`.part-START-PID-SEQ.parquet.tmp`, in the
/// spool or in a local partition) that a process which is gone left
/// behind: one that was killed before it committed them. Their events were never acknowledged, so their sources
/// send them again. A file is kept while its process runs (another
/// process of the same sink name may share the spool), unless the process
/// is this one under another start time (a restart that got the same
/// pid, as in a container). Returns how many were removed.
pub(super) fn clear_stale_spool(spool: &Path, own_run: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return 0;
    };
    let own_pid = std::process::id();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(run) = name
            .strip_prefix(".part-")
            .and_then(|r| r.strip_suffix(".parquet.tmp"))
            .and_then(|r| r.rsplit_once('-'))
            .map(|(run, _seq)| run)
        else {
            continue;
        };
        let Some(pid) = run
            .rsplit_once('-')
            .and_then(|(_, pid)| u32::from_str_radix(pid, 16).ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        let gone = !alive || (pid == own_pid && run != own_run);
        if gone && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `prefix/rel/name`, leaving out an empty prefix.
pub(super) fn object_key(prefix: &str, rel: &str, name: &str) -> String {
    [prefix, rel, name]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// The names of the files in an hour's directory.
pub(super) async fn list_hour(
    storage: &Storage,
    store: Option<&Arc<dyn ObjectStore>>,
    hour: i64,
) -> Result<Vec<String>, SinkError> {
    let rel = ParquetSink::partition(hour);
    match (storage, store) {
        (Storage::Local(root), _) => {
            let dir = root.join(&rel);
            match std::fs::read_dir(&dir) {
                Ok(entries) => Ok(entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(io("cannot list", &dir, e)),
            }
        }
        (Storage::S3(loc), Some(store)) => {
            let prefix = ObjectPath::from(object_key(&loc.prefix, &rel, ""));
            let mut names = Vec::new();
            let mut listing = store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| {
                    SinkError::transient(ConnectorError::Other(format!(
                        "cannot list `s3://{}/{prefix}`: {e}",
                        loc.bucket
                    )))
                })?;
                if let Some(name) = meta.location.filename() {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        }
        (Storage::S3(_), None) => Ok(Vec::new()),
    }
}
