//! berthd's metadata: pods and containers in one redb file, each record
//! written (and fsynced by the commit) before the action it describes, so a
//! restarted berthd knows what it may have left half-done.

use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

pub struct Store {
    db: Database,
}

#[derive(Debug, thiserror::Error)]
#[error("metadata store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Copy)]
pub enum Kind {
    Pod,
    Container,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Kind::Pod => PODS,
            Kind::Container => CONTAINERS,
        }
    }
}

/// The store's file under berthd's root.
pub fn db_path(root: &Path) -> std::path::PathBuf {
    root.join("berthd.db")
}

impl Store {
    /// Opens (or creates) the store. redb panics on some damaged files; the
    /// panic is caught and reported like an error, naming the file (under
    /// `panic = "abort"` it cannot be caught: berthd checks the file in a
    /// child process first, `berthd check-store`).
    pub fn open(path: &Path) -> Result<Store> {
        let at = |e: &dyn std::fmt::Display| StoreError(format!("{}: {e}", path.display()));
        let r = std::panic::catch_unwind(|| -> std::result::Result<Database, String> {
            let db = Database::create(path).map_err(|e| e.to_string())?;
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.open_table(PODS).map_err(|e| e.to_string())?;
            tx.open_table(CONTAINERS).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            Ok(db)
        });
        match r {
            Ok(Ok(db)) => Ok(Store { db }),
            Ok(Err(e)) => Err(at(&e)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(at(&format!("redb failed an internal check: {msg}")))
            }
        }
    }

    /// Reads every record (so a damaged table or record shows) and returns
    /// the pods' ids.
    pub fn check(&self) -> Result<Vec<String>> {
        let pods: Vec<serde_json::Value> = self.list(Kind::Pod)?;
        let _: Vec<serde_json::Value> = self.list(Kind::Container)?;
        Ok(pods
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect())
    }

    pub fn put<T: Serialize>(&self, kind: Kind, id: &str, v: &T) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(kind.table()).map_err(err)?;
            t.insert(id, bytes.as_slice()).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    pub fn get<T: DeserializeOwned>(&self, kind: Kind, id: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(kind.table()).map_err(err)?;
        match t.get(id).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// Reads, changes and writes one record in one transaction, so a record
    /// deleted or changed meanwhile is never written back stale: `f` gets
    /// the stored record and returns what to store, or None to leave it.
    /// Returns what was stored.
    pub fn update<T: Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        id: &str,
        f: impl FnOnce(T) -> Option<T>,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_write().map_err(err)?;
        let out = {
            let mut t = tx.open_table(kind.table()).map_err(err)?;
            let cur: Option<T> = match t.get(id).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            match cur.and_then(f) {
                Some(new) => {
                    let bytes = serde_json::to_vec(&new).map_err(err)?;
                    t.insert(id, bytes.as_slice()).map_err(err)?;
                    Some(new)
                }
                None => None,
            }
        };
        tx.commit().map_err(err)?;
        Ok(out)
    }

    pub fn delete(&self, kind: Kind, id: &str) -> Result<()> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(kind.table()).map_err(err)?;
            t.remove(id).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Up to `limit` records whose ids sort after `after` (from the first
    /// when None), in id order: a walk over every record that holds one
    /// page at a time.
    pub fn page<T: DeserializeOwned>(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>> {
        use std::ops::Bound;
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(kind.table()).map_err(err)?;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for e in t
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(err)?
            .take(limit)
        {
            let (k, v) = e.map_err(err)?;
            out.push((
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(err)?,
            ));
        }
        Ok(out)
    }

    pub fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(kind.table()).map_err(err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(err)? {
            let (_, v) = e.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }
}

/// Writes `data` to `path` so that a crash leaves the old file or the whole
/// new one (the copies of records next to pods and containers, which
/// `berthd repair` reads back when the store is lost).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_every_record_once_in_id_order() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("db")).unwrap();
        for i in (0..1203).rev() {
            s.put(Kind::Container, &format!("{i:05}"), &i).unwrap();
        }
        s.put(Kind::Pod, "other-table", &0).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: Vec<(String, i32)> = s.page(Kind::Container, after.as_deref(), 500).unwrap();
            assert!(page.len() <= 500);
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            seen.extend(page.into_iter().map(|(_, v)| v));
        }
        assert_eq!(seen, (0..1203).collect::<Vec<_>>());
    }
}
