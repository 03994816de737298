//! Nested groups, flattened: shared by the sources whose groups contain groups
//! (LDAP, Entra ID).

/// For each group, every user reachable through nested groups (sorted, unique).
/// `on_cycle(from, to)` is called for an edge that closes a cycle; the cycle is
/// otherwise harmless: each group is visited once per traversal.
pub(crate) fn flatten(
    direct_users: &[Vec<usize>],
    child_groups: &[Vec<usize>],
    mut on_cycle: impl FnMut(usize, usize),
) -> Vec<Vec<usize>> {
    let n = direct_users.len();
    // `visited[g] == root` marks g as seen in root's traversal: no clearing needed.
    let mut visited = vec![usize::MAX; n];
    let mut on_path = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for root in 0..n {
        let mut members = direct_users[root].clone();
        visited[root] = root;
        on_path[root] = true;
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(top) = path.last_mut() {
            let (group, next) = *top;
            match child_groups[group].get(next) {
                Some(&child) => {
                    top.1 += 1;
                    if on_path[child] {
                        on_cycle(group, child);
                    } else if visited[child] != root {
                        visited[child] = root;
                        on_path[child] = true;
                        members.extend_from_slice(&direct_users[child]);
                        path.push((child, 0));
                    }
                }
                None => {
                    on_path[group] = false;
                    path.pop();
                }
            }
        }
        members.sort_unstable();
        members.dedup();
        out.push(members);
    }
    out
}
