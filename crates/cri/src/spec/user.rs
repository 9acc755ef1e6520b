//! The process's uid, gid and groups: the CRI security context, else the
//! image's USER, with names resolved in the image's own /etc/passwd and
//! /etc/group.
//!
//! Those files come from the image, so they are opened with openat2
//! RESOLVE_IN_ROOT from the rootfs: a symlink in the image (say
//! /etc/passwd -> /etc/shadow of the node, or ../../../../etc/passwd)
//! resolves inside the rootfs and never reads a node file. Only regular
//! files are read (a FIFO would block, a device could have side effects),
//! and at most [`MAX_FILE`] bytes.

use super::{Result, SpecError, SC};
use berth_cri_api::v1::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};
use berth_image::ImageConfig;
use berth_oci::fsutil::{openat2, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
use serde_json::{json, Value};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

const MAX_FILE: u64 = 4 << 20;

/// The resolved identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, then the others, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The passwd name of `uid`, if the image has one.
    pub name: Option<String>,
}

impl User {
    pub fn to_json(&self) -> Value {
        json!({"uid": self.uid, "gid": self.gid, "additionalGids": self.additional_gids})
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// A file of the image read safely; Err is why it could not be read
/// (missing, a symlink loop, not a regular file, too big).
fn read_in_root(rootfs: &Path, rel: &str) -> std::result::Result<String, String> {
    let root = berth_oci::fsutil::open_path(rootfs, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| e.to_string())?;
    let fd = openat2(
        root.as_raw_fd(),
        Path::new(rel),
        libc::O_PATH,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e).to_string())?;
    let st = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("not a regular file".into());
    }
    if st.st_size as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    // Reopen the checked file itself (an O_PATH fd cannot be read).
    let f = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    let mut s = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut s)
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn parse_passwd(s: &str) -> Vec<PasswdEntry> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(s: &str) -> Vec<GroupEntry> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The image's passwd and group databases, read lazily; a file that cannot
/// be read counts as empty, and the reason is kept for error messages.
struct Db<'a> {
    rootfs: &'a Path,
    passwd: Option<(Vec<PasswdEntry>, Option<String>)>,
    group: Option<(Vec<GroupEntry>, Option<String>)>,
}

impl Db<'_> {
    fn passwd(&mut self) -> &(Vec<PasswdEntry>, Option<String>) {
        let rootfs = self.rootfs;
        self.passwd
            .get_or_insert_with(|| match read_in_root(rootfs, "etc/passwd") {
                Ok(s) => (parse_passwd(&s), None),
                Err(e) => (Vec::new(), Some(format!("the image's /etc/passwd: {e}"))),
            })
    }

    fn group(&mut self) -> &(Vec<GroupEntry>, Option<String>) {
        let rootfs = self.rootfs;
        self.group
            .get_or_insert_with(|| match read_in_root(rootfs, "etc/group") {
                Ok(s) => (parse_group(&s), None),
                Err(e) => (Vec::new(), Some(format!("the image's /etc/group: {e}"))),
            })
    }

    fn user_by_name(&mut self, name: &str, field: &str) -> Result<(u32, u32)> {
        let (list, why) = self.passwd();
        match list.iter().find(|e| e.name == name) {
            Some(e) => Ok((e.uid, e.gid)),
            None => Err(SpecError::new(
                field,
                format!(
                    "user {name:?} is not in the image's /etc/passwd{}",
                    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                ),
            )),
        }
    }

    fn user_by_uid(&mut self, uid: u32) -> Option<(String, u32)> {
        self.passwd()
            .0
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| (e.name.clone(), e.gid))
    }

    fn group_by_name(&mut self, name: &str, field: &str) -> Result<u32> {
        let (list, why) = self.group();
        match list.iter().find(|g| g.name == name) {
            Some(g) => Ok(g.gid),
            None => Err(SpecError::new(
                field,
                format!(
                    "group {name:?} is not in the image's /etc/group{}",
                    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                ),
            )),
        }
    }

    /// gids of the groups listing `name` as a member.
    fn member_of(&mut self, name: &str) -> Vec<u32> {
        self.group()
            .0
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .collect()
    }
}

fn id32(v: i64, field: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| SpecError::new(field, format!("{v} is not a valid id")))
}

/// Resolves the user, kubelet's rules: run_as_user or run_as_username (with
/// run_as_group), else the image's USER ("uid", "uid:gid", "name",
/// "name:group"); the gid defaults to the passwd entry's; groups are the
/// image's /etc/group memberships (policy Merge) plus supplemental_groups.
pub fn resolve(
    sc: &LinuxContainerSecurityContext,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<User> {
    let mut db = Db {
        rootfs,
        passwd: None,
        group: None,
    };
    let f_user = format!("{SC}.run_as_user");
    let f_name = format!("{SC}.run_as_username");
    let f_group = format!("{SC}.run_as_group");
    // (uid, gid from the user part, explicit gid, passwd name)
    let (uid, mut gid, name): (u32, Option<u32>, Option<String>);
    if let Some(u) = &sc.run_as_user {
        if !sc.run_as_username.is_empty() {
            return Err(SpecError::new(
                f_name,
                "only one of run_as_user and run_as_username may be set",
            ));
        }
        uid = id32(u.value, &f_user)?;
        let e = db.user_by_uid(uid);
        gid = e.as_ref().map(|e| e.1);
        name = e.map(|e| e.0);
    } else if !sc.run_as_username.is_empty() {
        let (u, g) = db.user_by_name(&sc.run_as_username, &f_name)?;
        uid = u;
        gid = Some(g);
        name = Some(sc.run_as_username.clone());
    } else if sc.run_as_group.is_some() {
        return Err(SpecError::new(
            f_group,
            "run_as_group needs run_as_user or run_as_username",
        ));
    } else {
        let field = "image.config.User";
        let spec = image.user.as_deref().unwrap_or("").trim();
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if u.is_empty() && g.is_some() {
            return Err(SpecError::new(field, format!("{spec:?} has no user part")));
        }
        if u.is_empty() {
            uid = 0;
            let e = db.user_by_uid(0);
            gid = e.as_ref().map(|e| e.1);
            name = e.map(|e| e.0);
        } else if let Ok(n) = u.parse::<u32>() {
            uid = n;
            let e = db.user_by_uid(uid);
            gid = e.as_ref().map(|e| e.1);
            name = e.map(|e| e.0);
        } else {
            let (n, g) = db.user_by_name(u, field)?;
            uid = n;
            gid = Some(g);
            name = Some(u.to_string());
        }
        match g {
            None => {}
            Some("") => {
                return Err(SpecError::new(
                    field,
                    format!("{spec:?} has an empty group"),
                ))
            }
            Some(g) => {
                gid = Some(match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => db.group_by_name(g, field)?,
                })
            }
        }
    }
    if let Some(g) = &sc.run_as_group {
        gid = Some(id32(g.value, &f_group)?);
    }
    let gid = gid.unwrap_or(0);

    let mut groups = vec![gid];
    let strict = match SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(p) => p == SupplementalGroupsPolicy::Strict,
        Err(_) => {
            return Err(SpecError::new(
                format!("{SC}.supplemental_groups_policy"),
                format!("unknown policy {}", sc.supplemental_groups_policy),
            ))
        }
    };
    if !strict {
        if let Some(n) = &name {
            groups.extend(db.member_of(n));
        }
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        groups.push(id32(*g, &format!("{SC}.supplemental_groups[{i}]"))?);
    }
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(*g));
    Ok(User {
        uid,
        gid,
        additional_gids: groups,
        name,
    })
}
