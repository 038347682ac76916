//! The text rendering of a [`Status`]: the one `lockticket status` prints and `Display` gives.
//! Its JSON rendering (`lockticket status --json`) reads the same model: the snapshot and what
//! it implies at an instant ([`Status::in_use`], [`MemberInfo::age`], [`TokenInfo::age`]).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{MemberInfo, Status, TokenInfo};
use crate::fairness::Fairness;

impl Status {
    /// The status as text, as `lockticket status` prints it: the table, whether it is in use,
    /// the payload, the slots, the repairs (when there were any), the order, then the owners, the holders and the queue, one line
    /// each, their ages counted to `now`. `path` is how the table's path is shown (a command
    /// escapes it for a terminal); `command` gives what to show after a live process of this
    /// PID namespace (`lockticket status`: its command line, escaped and shortened), `None`
    /// for nothing. [`Status`]'s `Display` is this with the path as it is, no command lines,
    /// and the current time.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-status-text-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let st = lt.status()?;
    /// let text = st.to_text(std::time::SystemTime::now(), "the table", |_pid| None);
    /// assert!(text.starts_with("table    the table\nstate    in use\n"));
    /// assert!(text.contains("holders  none: the lock is free\n"));
    /// # Ok(()) }
    /// ```
    pub fn to_text(
        &self,
        now: SystemTime,
        path: &str,
        command: impl Fn(u32) -> Option<String>,
    ) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "table    {path}");
        let _ = writeln!(
            o,
            "state    {}",
            if self.in_use() {
                "in use"
            } else {
                "unused: no live process owns or uses it"
            }
        );
        let _ = writeln!(
            o,
            "payload  {} of {} bytes (generation {})",
            self.payload_len, self.payload_capacity, self.payload_generation
        );
        let _ = writeln!(
            o,
            "slots    {} token slots; {} reclaimed from dead processes; table format {}{}",
            self.ring_capacity,
            self.reclaimed_slots,
            self.format_version,
            if self.consistent {
                ""
            } else {
                "; changed while read"
            }
        );
        if self.repairs > 0 {
            let _ = writeln!(
                o,
                "repairs  {} repaired: the token queue was found inconsistent and rebuilt",
                self.repairs
            );
        }
        let _ = writeln!(
            o,
            "order    {}",
            match self.fairness {
                Fairness::Strict => "strict: first come, first served".to_string(),
                f => format!(
                    "{f}: running processes may go ahead of sleeping waiters within the bound; \
                     {} grants went ahead",
                    self.bypasses
                ),
            }
        );
        let _ = writeln!(
            o,
            "owners   {}",
            if self.members.is_empty() {
                "none"
            } else {
                "(main lock)"
            }
        );
        let shown = |pid: u32, alive: bool, foreign: bool| {
            if foreign {
                "  (pid in another pid namespace)".to_string()
            } else if alive {
                command(pid).map(|c| format!("  {c}")).unwrap_or_default()
            } else {
                String::new()
            }
        };
        for m in &self.members {
            let _ = writeln!(
                o,
                "         pid {:<8} {:<9}  for {:<8}{}{}",
                m.pid,
                m.share.to_string(), // a String: `Display for Share` ignores the width
                human_duration(m.age(now)),
                dead(m.alive),
                shown(m.pid, m.alive, m.pid_foreign)
            );
        }
        let _ = writeln!(
            o,
            "holders  {}",
            if self.holders.is_empty() {
                "none: the lock is free"
            } else {
                ""
            }
        );
        let line = |prefix: &str, when: &str, t: &TokenInfo| {
            let who = shown(t.pid, t.alive, t.pid_foreign);
            if t.bypass {
                return format!(
                    "{prefix}pid {:<8} {:<9}  ahead of ticket {}{}{who}",
                    t.pid,
                    t.share.to_string(),
                    t.ticket,
                    dead(t.alive),
                );
            }
            format!(
                "{prefix}pid {:<8} {:<9}  ticket {:<6} {when} {:<8}{}{who}",
                t.pid,
                t.share.to_string(),
                t.ticket,
                human_duration(t.age(now)),
                dead(t.alive),
            )
        };
        for t in &self.holders {
            let _ = writeln!(o, "{}", line("         ", "since", t));
        }
        let _ = writeln!(
            o,
            "queue    {}",
            if self.queue.is_empty() {
                "empty"
            } else {
                "first come, first served:"
            }
        );
        for (i, t) in self.queue.iter().enumerate() {
            let _ = writeln!(o, "{}", line(&format!("  {:>4}.  ", i + 1), "waiting", t));
        }
        o.lines().map(str::trim_end).collect::<Vec<_>>().join("\n") + "\n"
    }

    /// True when a live process owns the table, holds its token or waits for it: a table not
    /// in use is one `lockticket clean` removes.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-status-in-use-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// assert!(lt.status()?.in_use()); // we own it
    /// # Ok(()) }
    /// ```
    pub fn in_use(&self) -> bool {
        self.members.iter().any(|m| m.alive)
            || self.holders.iter().chain(&self.queue).any(|t| t.alive)
    }
}

impl MemberInfo {
    /// How long it has been an owner at `now` (`None` when its joining time is not known;
    /// zero when `now` is before it).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-member-age-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let st = lt.status()?;
    /// assert!(st.members[0].age(std::time::SystemTime::now()).is_some());
    /// # Ok(()) }
    /// ```
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        age(self.joined, now)
    }
}

impl TokenInfo {
    /// How long it has held the token (a holder) or waited (a queued request) at `now`
    /// (`None` when not known; zero when `now` is before it).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-token-age-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let _token = lt.token_lock()?;
    /// let st = lt.status()?;
    /// assert!(st.holders[0].age(std::time::SystemTime::now()).is_some());
    /// # Ok(()) }
    /// ```
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        age(self.since, now)
    }
}

fn age(t: Option<SystemTime>, now: SystemTime) -> Option<Duration> {
    t.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
}

fn human_duration(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".into() };
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() / 60 % 60)
    }
}

/// Marks a dead process.
fn dead(alive: bool) -> &'static str {
    if alive { "" } else { "  (dead)" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::Share;
    use std::time::UNIX_EPOCH;

    /// The one text rendering, line by line: what `lockticket status` prints (its tests check
    /// the command's output) and what `Display` gives.
    #[test]
    fn one_text_rendering_of_the_model() {
        let at = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let token = |pid, ticket, alive, since, bypass| TokenInfo {
            pid,
            pid_foreign: pid == 9,
            parent: pid,
            share: Share::Exclusive,
            ticket,
            alive,
            since,
            bypass,
        };
        let st = Status {
            path: "/dev/shm/lockticket-x.lt".into(),
            format_version: 3,
            ring_capacity: 1024,
            fairness: Fairness::Strict,
            bypasses: 0,
            payload_capacity: 4096,
            members: vec![MemberInfo {
                pid: 7,
                pid_foreign: false,
                share: Share::Shared,
                alive: true,
                joined: at(880),
            }],
            holders: vec![token(7, 4, true, at(999), false)],
            queue: vec![
                token(8, 5, false, None, false),
                token(9, 6, true, at(1), false),
            ],
            reclaimed_slots: 2,
            repairs: 0,
            last_fencing_token: 0,
            payload_len: 3,
            payload_generation: 1,
            consistent: true,
        };
        assert!(st.in_use());
        let text = st.to_text(now, "T", |pid| Some(format!("cmd-{pid}")));
        assert_eq!(
            text,
            "table    T\n\
             state    in use\n\
             payload  3 of 4096 bytes (generation 1)\n\
             slots    1024 token slots; 2 reclaimed from dead processes; table format 3\n\
             order    strict: first come, first served\n\
             owners   (main lock)\n         \
             pid 7        shared     for 2m00s     cmd-7\n\
             holders\n         \
             pid 7        exclusive  ticket 4      since 1.0s      cmd-7\n\
             queue    first come, first served:\n     \
             1.  pid 8        exclusive  ticket 5      waiting -         (dead)\n     \
             2.  pid 9        exclusive  ticket 6      waiting 16m39s    (pid in another pid namespace)\n"
        );
        assert!(
            st.to_string()
                .starts_with("table    /dev/shm/lockticket-x.lt\n")
        );
        assert!(!st.to_string().contains("cmd-"));
        let repaired = Status {
            repairs: 1,
            ..st.clone()
        };
        let text = repaired.to_text(now, "T", |_| None);
        assert!(
            text.contains(
                "\nrepairs  1 repaired: the token queue was found inconsistent and rebuilt\norder "
            ),
            "{text}"
        );
    }
}
