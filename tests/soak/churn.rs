//! Random churn of a CSV directory, as HR exports it from one day to the
//! next: joiners, leavers, renames (a new email, so a new userName),
//! attribute changes, people disabled and enabled again, moves between
//! groups, groups created, renamed and deleted. Seeded: the same seed gives
//! the same history.
//!
//! Invariants the comparison relies on: emails are never reused (a leaver's
//! address is never handed to someone else), and only active users are
//! members of groups.

use crate::harness::{Directory, UserRow};
use crate::support::proxy::Rng;

const TITLES: &[&str] = &["Engineer", "Analyst", "Manager", "Lead", "Director"];
const DEPARTMENTS: &[&str] = &["Engineering", "Sales", "Finance", "Support", "Ops"];

/// One kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Join,
    Leave,
    Rename,
    Update,
    Disable,
    Enable,
    Move,
    JoinGroup,
    GroupCreate,
    GroupRename,
    GroupDelete,
}

/// The churn generator: its random numbers and a counter for fresh names.
pub struct Churn {
    rng: Rng,
    fresh: usize,
    /// Users the directory keeps between, most of the time.
    low: usize,
    high: usize,
}

impl Churn {
    /// Churn that keeps a directory of about `users` users.
    pub fn new(seed: u64, users: usize) -> Churn {
        Churn {
            rng: Rng::new(seed),
            fresh: 0,
            low: users * 4 / 5,
            high: users * 6 / 5,
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn next_name(&mut self) -> usize {
        self.fresh += 1;
        self.fresh
    }

    fn pick(&mut self, n: usize) -> usize {
        self.rng.range(0, n as u64) as usize
    }

    /// Applies `n` random changes to `dir`; returns what each was.
    pub fn step(&mut self, dir: &mut Directory, n: usize) -> Vec<Change> {
        (0..n).filter_map(|_| self.one(dir)).collect()
    }

    /// One random change, or `None` when the one drawn had nothing to act on.
    fn one(&mut self, dir: &mut Directory) -> Option<Change> {
        let users = dir.users.len();
        // Joiners and leavers balance around the target size.
        let (join, leave) = if users < self.low {
            (30, 5)
        } else if users > self.high {
            (5, 30)
        } else {
            (15, 15)
        };
        let weights = [
            (Change::Join, join),
            (Change::Leave, leave),
            (Change::Rename, 10),
            (Change::Update, 20),
            (Change::Disable, 6),
            (Change::Enable, 6),
            (Change::Move, 15),
            (Change::JoinGroup, 8),
            (Change::GroupCreate, 2),
            (Change::GroupRename, 2),
            (Change::GroupDelete, 2),
        ];
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        let mut draw = self.rng.range(0, total);
        let change = weights
            .iter()
            .find(|(_, w)| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .map_or(Change::Update, |(c, _)| *c);
        self.apply(dir, change).then_some(change)
    }

    fn apply(&mut self, dir: &mut Directory, change: Change) -> bool {
        match change {
            Change::Join => self.join(dir),
            Change::Leave => self.leave(dir),
            Change::Rename => self.rename(dir),
            Change::Update => self.update(dir),
            Change::Disable => self.disable(dir),
            Change::Enable => self.enable(dir),
            Change::Move => self.move_member(dir),
            Change::JoinGroup => self.join_group(dir),
            Change::GroupCreate => self.group_create(dir),
            Change::GroupRename => self.group_rename(dir),
            Change::GroupDelete => self.group_delete(dir),
        }
    }

    fn join(&mut self, dir: &mut Directory) -> bool {
        let n = self.next_name();
        let mut u = UserRow::new(
            &format!("j{n:05}"),
            &format!("joiner{n:05}@example.com"),
            &format!("Joiner{n}"),
            "Churn",
        );
        u.title = TITLES[self.pick(TITLES.len())].into();
        u.department = DEPARTMENTS[self.pick(DEPARTMENTS.len())].into();
        let id = u.id.clone();
        dir.users.push(u);
        if !dir.groups.is_empty() {
            let g = self.group_at(dir);
            dir.groups.get_mut(&g).expect("group").push(id);
        }
        true
    }

    fn leave(&mut self, dir: &mut Directory) -> bool {
        if dir.users.len() < 5 {
            return false;
        }
        let id = dir.users[self.pick(dir.users.len())].id.clone();
        dir.remove_user(&id);
        true
    }

    fn rename(&mut self, dir: &mut Directory) -> bool {
        let n = self.next_name();
        let i = self.pick(dir.users.len());
        dir.users[i].email = format!("renamed{n:05}@example.com");
        true
    }

    fn update(&mut self, dir: &mut Directory) -> bool {
        let n = self.next_name();
        let i = self.pick(dir.users.len());
        match self.rng.range(0, 3) {
            0 => dir.users[i].title = format!("{} {n}", TITLES[n % TITLES.len()]),
            1 => dir.users[i].department = DEPARTMENTS[n % DEPARTMENTS.len()].into(),
            _ => {
                let family = format!("Family{n}");
                dir.users[i].display_name = format!("{} {family}", dir.users[i].given_name);
                dir.users[i].family_name = family;
            }
        }
        true
    }

    fn disable(&mut self, dir: &mut Directory) -> bool {
        let Some(i) = self.pick_where(dir, |u| u.active) else {
            return false;
        };
        dir.users[i].active = false;
        let id = dir.users[i].id.clone();
        for members in dir.groups.values_mut() {
            members.retain(|m| *m != id);
        }
        true
    }

    fn enable(&mut self, dir: &mut Directory) -> bool {
        let Some(i) = self.pick_where(dir, |u| !u.active) else {
            return false;
        };
        dir.users[i].active = true;
        true
    }

    /// A member of one group moves to another.
    fn move_member(&mut self, dir: &mut Directory) -> bool {
        if dir.groups.len() < 2 {
            return false;
        }
        let from = self.group_at(dir);
        let members = &dir.groups[&from];
        if members.is_empty() {
            return false;
        }
        let who = members[self.pick(members.len())].clone();
        let to = self.group_at(dir);
        if to == from || dir.groups[&to].contains(&who) {
            return false;
        }
        dir.groups
            .get_mut(&from)
            .expect("group")
            .retain(|m| *m != who);
        dir.groups.get_mut(&to).expect("group").push(who);
        true
    }

    fn join_group(&mut self, dir: &mut Directory) -> bool {
        if dir.groups.is_empty() {
            return false;
        }
        let Some(i) = self.pick_where(dir, |u| u.active) else {
            return false;
        };
        let who = dir.users[i].id.clone();
        let to = self.group_at(dir);
        let members = dir.groups.get_mut(&to).expect("group");
        if members.contains(&who) {
            return false;
        }
        members.push(who);
        true
    }

    fn group_create(&mut self, dir: &mut Directory) -> bool {
        let n = self.next_name();
        let mut members = Vec::new();
        for _ in 0..self.rng.range(0, 6) {
            if let Some(i) = self.pick_where(dir, |u| u.active) {
                let id = dir.users[i].id.clone();
                if !members.contains(&id) {
                    members.push(id);
                }
            }
        }
        dir.groups.insert(format!("team-{n:05}"), members);
        true
    }

    /// The CSV source knows a group by its name: a rename is a new group
    /// with the same members, and the old one gone.
    fn group_rename(&mut self, dir: &mut Directory) -> bool {
        if dir.groups.is_empty() {
            return false;
        }
        let n = self.next_name();
        let old = self.group_at(dir);
        let members = dir.groups.remove(&old).expect("group");
        dir.groups.insert(format!("renamed-{n:05}"), members);
        true
    }

    fn group_delete(&mut self, dir: &mut Directory) -> bool {
        if dir.groups.len() <= 4 {
            return false;
        }
        let g = self.group_at(dir);
        dir.groups.remove(&g);
        true
    }

    fn group_at(&mut self, dir: &Directory) -> String {
        let i = self.pick(dir.groups.len().max(1));
        dir.groups.keys().nth(i).cloned().unwrap_or_default()
    }

    /// A random user for which `cond` holds (a few tries), by index.
    fn pick_where(&mut self, dir: &Directory, cond: impl Fn(&UserRow) -> bool) -> Option<usize> {
        (0..20)
            .map(|_| self.pick(dir.users.len()))
            .find(|&i| cond(&dir.users[i]))
    }
}
