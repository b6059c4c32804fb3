//! Planning: the minimal nft transaction from what is to what should be.

use super::*;

/// One kernel operation of a [`Transaction`], for plan listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FwOp {
    /// Delete (if present) and create the table with every element.
    RebuildTable {
        /// `inet` or `bridge`.
        family: String,
    },
    /// Delete the table (the bridge table once no network has
    /// `icc = false`).
    DeleteTable {
        /// `inet` or `bridge`.
        family: String,
    },
    /// Add one element to a set or map of an existing table.
    AddElement {
        /// `inet` or `bridge`.
        family: String,
        /// The set or map.
        set: String,
        /// The element as in the nft script: key, comment and, in a map,
        /// `: value`.
        element: String,
        /// The element comment: port key or network it belongs to.
        owner: String,
    },
    /// Delete one element of a set or map.
    DeleteElement {
        /// `inet` or `bridge`.
        family: String,
        /// The set or map.
        set: String,
        /// The element as in the nft script.
        element: String,
        /// The element comment: port key or network it belonged to.
        owner: String,
    },
}

/// The minimal change from the observed to the desired firewall, applied as
/// one atomic nft transaction.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    pub(super) script: String,
    pub(super) ops: Vec<FwOp>,
    pub(super) rebuilt: Vec<Family>,
    pub(super) added: usize,
    pub(super) removed: usize,
    /// The element operations of `ops` that are published ports, in the
    /// kernel's encoding ([`Transaction::port_edits`]).
    pub(super) port_edits: Vec<ElementEdit>,
}

/// At most this many port elements are written as netlink messages of
/// netloom's own ([`Transaction::port_edits`]); a larger change, like
/// every other one, goes to nft as a script.
pub const PORT_EDITS_MAX: usize = 64;

/// One element added to or deleted from a port map of `inet netloom`,
/// as the kernel stores it: each part of a concatenation in 4-byte
/// registers, addresses and ports in network byte order, the protocol
/// number in the first byte of its register (what `nft --debug=netlink`
/// shows for the script's elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementEdit {
    /// Deleted (only the key is sent), or added.
    pub delete: bool,
    /// The map, in table `inet netloom`.
    pub map: &'static str,
    /// The key: protocol and port, after the host address if it has one.
    pub key: Vec<u8>,
    /// The DNAT target: address and port.
    pub data: Vec<u8>,
    /// The element comment, stored as libnftnl's user data.
    pub comment: String,
}

impl Transaction {
    /// Whether there is nothing to send: the firewall is converged.
    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }
    /// Set/map elements written (on a rebuild: every element of the table).
    pub fn elements_added(&self) -> usize {
        self.added
    }
    /// Set/map elements deleted (on a rebuild: those the old table held).
    pub fn elements_removed(&self) -> usize {
        self.removed
    }
    /// Whether a table is (re)created rather than edited element-wise.
    pub fn full_rebuild(&self) -> bool {
        !self.rebuilt.is_empty()
    }
    /// The script's operations, in order, for plan listings.
    pub fn ops(&self) -> &[FwOp] {
        &self.ops
    }
    /// The nft script given to `nft -f -`; for a transaction of only a
    /// few port elements ([`Transaction::port_edits`]), what the netlink
    /// batch sent instead does, in nft's words.
    pub fn script(&self) -> &str {
        &self.script
    }
    /// The whole transaction as a few port elements, when it is nothing
    /// else (no table made or deleted, no other set touched) and at most
    /// [`PORT_EDITS_MAX`]: the everyday change of publishing or
    /// unpublishing a port, or adding or removing a container. Sent as one
    /// netlink batch, it is the same atomic transaction as the script, but
    /// without nft 1.0.6's cost of reading every element of a map before
    /// it deletes one from it (12–24 ms at 2,000 ports, measured).
    pub fn port_edits(&self) -> Option<&[ElementEdit]> {
        let only_ports = self.rebuilt.is_empty()
            && !self.port_edits.is_empty()
            && self.port_edits.len() == self.ops.len()
            && self.port_edits.len() <= PORT_EDITS_MAX;
        only_ports.then_some(self.port_edits.as_slice())
    }
    /// JSON for `plan --format json`: counts, operations and the script.
    /// (Not an `nft -j` document: nft 1.0.6 cannot read back concatenated
    /// map types from JSON, see the module doc.)
    pub fn to_json(&self) -> String {
        json!({
            "full_rebuild": self.full_rebuild(),
            "elements_added": self.added,
            "elements_removed": self.removed,
            "ops": self.ops,
            "nft_script": self.script,
        })
        .to_string()
    }
}

pub(super) fn rebuild(
    tx: &mut Transaction,
    family: Family,
    desired: &Elements,
    observed: Option<&Observed>,
) {
    let fam = family.name();
    // `add` first so `delete` cannot fail on a table that vanished since
    // it was observed.
    let _ = writeln!(
        tx.script,
        "add table {fam} {TABLE}\ndelete table {fam} {TABLE}"
    );
    // The mark is set where the table is created: a table's comment cannot
    // be changed afterwards, and so the mark comes in the same transaction.
    let body = render_table(family, desired);
    let body = body.replacen(" {\n", &format!(" {{\n\tcomment \"{TABLE_MARK}\"\n"), 1);
    tx.script.push_str(&body);
    tx.ops.push(FwOp::RebuildTable {
        family: fam.to_string(),
    });
    for ((set, key), d) in desired {
        tx.ops.push(FwOp::AddElement {
            family: fam.to_string(),
            set: set.name().to_string(),
            element: elem_text(key, d),
            owner: d.comment.clone(),
        });
    }
    tx.rebuilt.push(family);
    tx.added += desired.len();
    tx.removed += observed.map_or(0, |o| elements_of(&o.elements, family).len());
}

pub(super) fn diff_elements(tx: &mut Transaction, desired: &Elements, observed: &Elements) {
    let mut dels: BTreeMap<SetId, Vec<(&ElemKey, &ElemData)>> = BTreeMap::new();
    let mut adds: BTreeMap<SetId, Vec<(&ElemKey, &ElemData)>> = BTreeMap::new();
    for ((set, key), d) in desired {
        match observed.get(&(*set, key.clone())) {
            Some(o) if o == d => {}
            Some(o) => {
                // A changed value or comment: replace the element.
                dels.entry(*set).or_default().push((key, o));
                adds.entry(*set).or_default().push((key, d));
            }
            None => adds.entry(*set).or_default().push((key, d)),
        }
    }
    for ((set, key), o) in observed {
        if !desired.contains_key(&(*set, key.clone())) {
            dels.entry(*set).or_default().push((key, o));
        }
    }
    // Deletions first: a replaced element or a subnet that shrank must be
    // gone before its successor is added.
    for (set, list) in &dels {
        let fam = set.family().name();
        let keys: Vec<String> = list.iter().map(|(k, _)| k.to_string()).collect();
        let _ = writeln!(
            tx.script,
            "delete element {fam} {TABLE} {} {{ {} }}",
            set.name(),
            keys.join(", ")
        );
        for (k, d) in list {
            tx.ops.push(FwOp::DeleteElement {
                family: fam.to_string(),
                set: set.name().to_string(),
                element: elem_text(k, d),
                owner: d.comment.clone(),
            });
            tx.port_edits.extend(port_edit(true, *set, k, d));
        }
        tx.removed += list.len();
    }
    for (set, list) in &adds {
        let fam = set.family().name();
        let elems: Vec<String> = list.iter().map(|(k, d)| elem_text(k, d)).collect();
        let _ = writeln!(
            tx.script,
            "add element {fam} {TABLE} {} {{ {} }}",
            set.name(),
            elems.join(", ")
        );
        for (k, d) in list {
            tx.ops.push(FwOp::AddElement {
                family: fam.to_string(),
                set: set.name().to_string(),
                element: elem_text(k, d),
                owner: d.comment.clone(),
            });
            tx.port_edits.extend(port_edit(false, *set, k, d));
        }
        tx.added += list.len();
    }
}

/// Element `key` of port map `set` in the kernel's encoding; None for
/// any other set.
fn port_edit(delete: bool, set: SetId, key: &ElemKey, d: &ElemData) -> Option<ElementEdit> {
    fn register(bytes: &[u8]) -> Vec<u8> {
        let mut r = bytes.to_vec();
        r.resize(bytes.len().next_multiple_of(4), 0);
        r
    }
    let service = |port: u16| register(&port.to_be_bytes());
    let proto = |p: Proto| register(&[p.number()]);
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let key = match (set, key) {
        (SetId::DnatAny | SetId::Dnat6Any, ElemKey::Port(p, port)) => {
            [proto(*p), service(*port)].concat()
        }
        (SetId::DnatHostIp, ElemKey::HostPort(ip, p, port)) => {
            [addr((*ip).into()), proto(*p), service(*port)].concat()
        }
        (SetId::Dnat6HostIp, ElemKey::HostPort6(ip, p, port)) => {
            [addr((*ip).into()), proto(*p), service(*port)].concat()
        }
        _ => return None,
    };
    let (ip, port) = d.target?;
    let data = [addr(ip), service(port)].concat();
    Some(ElementEdit {
        delete,
        map: set.name(),
        key,
        data,
        comment: d.comment.clone(),
    })
}

/// The minimal transaction from `observed` to `desired`: a table whose
/// skeleton is missing or differs is re-created whole; otherwise only
/// elements are added and deleted. Pure.
pub fn plan_transaction(desired: &Firewall, observed: Option<&Observed>) -> Transaction {
    let want = desired_elements(desired);
    let mut tx = Transaction::default();

    let want_inet = elements_of(&want, Family::Inet);
    match observed.and_then(|o| o.inet.as_ref().map(|s| (o, s))) {
        Some((o, s)) if s.skeleton_ok => {
            diff_elements(&mut tx, &want_inet, &elements_of(&o.elements, Family::Inet));
        }
        _ => rebuild(&mut tx, Family::Inet, &want_inet, observed),
    }

    let want_bridge = elements_of(&want, Family::Bridge);
    let have_bridge = observed.and_then(|o| o.bridge.as_ref().map(|s| (o, s)));
    match (needs_bridge_table(&want), have_bridge) {
        (true, Some((o, s))) if s.skeleton_ok => {
            diff_elements(
                &mut tx,
                &want_bridge,
                &elements_of(&o.elements, Family::Bridge),
            );
        }
        (true, _) => rebuild(&mut tx, Family::Bridge, &want_bridge, observed),
        (false, Some((o, _))) => {
            let _ = writeln!(
                tx.script,
                "add table bridge {TABLE}\ndelete table bridge {TABLE}"
            );
            tx.ops.push(FwOp::DeleteTable {
                family: "bridge".to_string(),
            });
            tx.removed += elements_of(&o.elements, Family::Bridge).len();
        }
        (false, None) => {}
    }
    tx
}

/// The script that deletes netloom's tables that `o` shows present (for
/// `netloom down`), in one transaction. Other tables are not touched.
pub fn delete_script(o: &Observed) -> String {
    let mut script = String::new();
    for (family, present) in [("inet", o.inet.is_some()), ("bridge", o.bridge.is_some())] {
        if present {
            let _ = writeln!(
                script,
                "add table {family} {TABLE}\ndelete table {family} {TABLE}"
            );
        }
    }
    script
}
