//! Rendering: the canonical text of netloom's tables, which is also the
//! script that creates them.

use super::*;

pub(super) fn elem_text(key: &ElemKey, d: &ElemData) -> String {
    let mut s = format!("{key} comment \"{}\"", d.comment);
    if let Some((ip, port)) = d.target {
        let _ = write!(s, " : {ip} . {port}");
    }
    s
}

/// One table in nft syntax, elements one per line in a stable order, so a
/// unified diff of two renderings shows exactly the changed elements.
pub(super) fn render_table(family: Family, elements: &Elements) -> String {
    let mut s = format!("table {} {TABLE} {{\n", family.name());
    for set in ALL_SETS.into_iter().filter(|s| s.family() == family) {
        let kw = if set.is_map() { "map" } else { "set" };
        let _ = writeln!(s, "\t{kw} {} {{", set.name());
        if let Some(data) = set.data_type() {
            let _ = writeln!(s, "\t\ttype {} : {data}", set.key_type());
        } else {
            let _ = writeln!(s, "\t\ttype {}", set.key_type());
        }
        if set.is_interval() {
            s.push_str("\t\tflags interval\n");
        }
        if set.is_map() {
            s.push_str("\t\tcounter\n");
        }
        let _ = writeln!(s, "\t\tcomment \"{}\"", set.comment());
        let mut elems = elements
            .range((set, ElemKey::Ifname(String::new()))..)
            .peekable();
        if elems.peek().is_some_and(|((sid, _), _)| *sid == set) {
            s.push_str("\t\telements = {\n");
            for ((_, key), d) in elems.take_while(|((sid, _), _)| *sid == set) {
                let _ = writeln!(s, "\t\t\t{},", elem_text(key, d));
            }
            s.push_str("\t\t}\n");
        }
        s.push_str("\t}\n\n");
    }
    let rules = rules();
    for c in CHAINS.iter().filter(|c| c.family == family) {
        let _ = writeln!(s, "\tchain {} {{", c.name);
        let _ = writeln!(
            s,
            "\t\ttype {} hook {} priority {}; policy accept;",
            c.kind, c.hook, c.prio_text
        );
        for r in rules
            .iter()
            .filter(|r| r.family == family && r.chain == c.name)
        {
            let _ = writeln!(s, "\t\t{} comment \"{}\"", r.text, r.comment);
        }
        s.push_str("\t}\n\n");
    }
    // Drop the blank line before the closing brace.
    s.truncate(s.trim_end().len());
    s.push_str("\n}\n");
    s
}

pub(super) fn elements_of(elements: &Elements, family: Family) -> Elements {
    elements
        .iter()
        .filter(|((set, _), _)| set.family() == family)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn needs_bridge_table(elements: &Elements) -> bool {
    elements
        .keys()
        .any(|(set, _)| set.family() == Family::Bridge)
}

/// Canonical nft text of the desired table(s), stable for plan diffs.
pub fn render(fw: &Firewall) -> String {
    let elements = desired_elements(fw);
    let mut s = render_table(Family::Inet, &elements_of(&elements, Family::Inet));
    if needs_bridge_table(&elements) {
        s.push('\n');
        s.push_str(&render_table(
            Family::Bridge,
            &elements_of(&elements, Family::Bridge),
        ));
    }
    s
}
