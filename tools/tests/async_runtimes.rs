//! lockticket's futures on real runtimes (issue 19, item 6): tokio (current-thread and
//! multi-thread), smol and `futures::executor::block_on`, against helper processes (this test
//! binary re-run in a role). Bounded in time; no sleep synchronises anything: helpers report
//! over pipes, and the tests wait for observable table states (`status().queue`).
//!
//! tokio, smol and futures-executor are dev-dependencies of `lockticket-tools` only: the
//! library has no runtime dependency, and its demo stays small.

// The root crate's test plumbing (helper processes, unique names, bounded waits), shared.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::*;
use lockticket::{LockTicket, Share};

fn dispatch(role: &str, args: &[String]) {
    let lt = Arc::new(LockTicket::open(&args[0]).unwrap());
    match role {
        // Takes the exclusive token (blocking), says so, holds it until told (or killed).
        "hold" => {
            let g = lt.token_lock().unwrap();
            say(format!(
                "held died={} fence={}",
                g.previous_holder_died(),
                g.fencing_token()
            ));
            let _ = hear();
            drop(g);
            say("released");
        }
        // Waits for the exclusive token (blocking), says when it has it, then releases.
        "wait" => {
            say("waiting");
            let g = lt.token_lock().unwrap();
            say(format!(
                "got died={} fence={}",
                g.previous_holder_died(),
                g.fencing_token()
            ));
            drop(g);
        }
        // Takes the token in a task, then queues 10 more futures behind it and waits to be
        // SIGKILLed.
        "async-hold" => current_thread().block_on(async {
            let g = lt.token_lock_async().await.unwrap();
            say(format!("held fence={}", g.fencing_token()));
            let before = queued(&lt);
            for _ in 0..10 {
                let f = lt.token_lock_owned_async();
                tokio::spawn(async move {
                    let _g = f.await;
                    unreachable!("granted behind a guard that is never released");
                });
            }
            wait_queued_async(&lt, before + 10).await;
            say("pending");
            std::future::pending::<()>().await;
            drop(g);
        }),
        // Queues 5 futures, then reports each grant (holding it until the next one is seen).
        "async-wait" => current_thread().block_on(async {
            let before = queued(&lt);
            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let f = lt.token_lock_owned_async();
                    tokio::spawn(async move {
                        let g = f.await.unwrap().unwrap();
                        say(format!(
                            "got died={} fence={}",
                            g.previous_holder_died(),
                            g.fencing_token()
                        ));
                        tokio::task::yield_now().await;
                        drop(g);
                    })
                })
                .collect();
            wait_queued_async(&lt, before + 5).await;
            say("pending");
            for t in tasks {
                t.await.unwrap();
            }
            say("done");
        }),
        // FIFO takers: on each command (`async` or `block`) queues one more taker, then says
        // `queued N` with its arrival number; `end`: waits for all takers and says `done`.
        "fifo" => {
            let rt = multi_thread();
            let (order, counter) = (Path::new(&args[1]), Path::new(&args[2]));
            let mut takers = Takers::default();
            loop {
                match hear().as_str() {
                    "async" => {
                        let n = takers.queue_async(&rt, &lt, order, counter);
                        say(format!("queued {n}"));
                    }
                    "block" => {
                        let n = takers.queue_blocking(&lt, order, counter);
                        say(format!("queued {n}"));
                    }
                    _ => break,
                }
            }
            takers.join(&rt);
            say("done");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A table with room for more than 1,000 requests at once.
fn table(tag: &str) -> (Arc<LockTicket>, String) {
    let name = unique(tag);
    let lt = LockTicket::builder(&name)
        .ring_capacity(4096)
        .open()
        .unwrap();
    (Arc::new(lt), name)
}

fn queued(lt: &LockTicket) -> usize {
    lt.status().unwrap().queue.len()
}

/// Waits, inside a task, until `n` requests are queued (looking every millisecond: a state
/// is polled, nothing is synchronised by the sleep).
async fn wait_queued_async(lt: &LockTicket, n: usize) {
    let deadline = Instant::now() + BOUND;
    while queued(lt) != n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} queued (now {})",
            queued(lt)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A small xorshift generator (the seed is printed, and taken from `LOCKTICKET_TEST_SEED`
/// when set, so that a failing storm can be replayed).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("LOCKTICKET_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("seed {seed} (LOCKTICKET_TEST_SEED={seed} replays it)");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Queues one taker at a time (the test serialises them), so that each one's arrival number,
/// drawn from the shared counter file once its request is seen in the queue, is its place.
#[derive(Default)]
struct Takers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Takes the next arrival number from the counter file (callers are serialised).
fn draw(counter: &Path) -> u64 {
    let n: u64 = std::fs::read_to_string(counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::fs::write(counter, format!("{}", n + 1)).unwrap();
    n
}

/// Appends `arrival fence` to the order file (called under the token).
fn append(order: &Path, arrival: u64, fence: u64) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(order)
        .unwrap();
    writeln!(f, "{arrival} {fence}").unwrap();
}

impl Takers {
    fn queue_async(
        &mut self,
        rt: &tokio::runtime::Runtime,
        lt: &Arc<LockTicket>,
        order: &Path,
        counter: &Path,
    ) -> u64 {
        let before = queued(lt);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = lt.token_lock_owned_async();
        let order = order.to_path_buf();
        self.tasks.push(rt.spawn(async move {
            let g = fut.await.unwrap().unwrap();
            let arrival = rx.await.unwrap();
            append(&order, arrival, g.fencing_token());
            g.unlock().unwrap();
        }));
        wait_until("the task's request in the queue", || {
            queued(lt) == before + 1
        });
        let n = draw(counter);
        tx.send(n).unwrap();
        n
    }

    fn queue_blocking(&mut self, lt: &Arc<LockTicket>, order: &Path, counter: &Path) -> u64 {
        let before = queued(lt);
        let (tx, rx) = std::sync::mpsc::channel();
        let (lt2, order) = (Arc::clone(lt), order.to_path_buf());
        self.threads.push(std::thread::spawn(move || {
            let g = lt2.token_lock().unwrap();
            let arrival = rx.recv().unwrap();
            append(&order, arrival, g.fencing_token());
            g.unlock().unwrap();
        }));
        wait_until("the thread's request in the queue", || {
            queued(lt) == before + 1
        });
        let n = draw(counter);
        tx.send(n).unwrap();
        n
    }

    fn join(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            for t in self.tasks {
                t.await.unwrap();
            }
        });
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn a_current_thread_runtime_keeps_beating_while_1000_tasks_queue_behind_other_processes() {
    let (lt, name) = table("rt-heartbeat");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let rt = current_thread();
    let order = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (max_gap, beats, waited) = rt.block_on(async {
        let beat = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut last, mut max, mut beats) = (Instant::now(), Duration::ZERO, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let now = Instant::now();
                    max = max.max(now - last);
                    last = now;
                    beats += 1;
                }
                (max, beats)
            })
        };
        let spawn = |i: usize| {
            let (fut, order, in_flight) = (
                lt.token_lock_owned_async(),
                Arc::clone(&order),
                Arc::clone(&in_flight),
            );
            tokio::spawn(async move {
                let g = fut.await.unwrap().unwrap();
                assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                order.lock().unwrap().push(i);
                // Hold across an await: the other tasks run meanwhile, and must not get it.
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            })
        };
        let mut tasks: Vec<_> = (0..500).map(spawn).collect();
        wait_queued_async(&lt, 500).await;
        // A blocking waiter of another process queues in the middle of the tasks.
        // (Started off the executor: starting a process and reading its pipe block.)
        let name2 = name.clone();
        let mut waiter = tokio::task::spawn_blocking(move || {
            let mut w = Helper::spawn("wait", &[&name2]);
            w.expect("waiting");
            w
        })
        .await
        .unwrap();
        wait_queued_async(&lt, 501).await;
        tasks.extend((500..1000).map(spawn));
        wait_queued_async(&lt, 1001).await;
        // What 1,000 pending futures cost while the queue stands still (a measurement window,
        // not a synchronisation): printed, not asserted.
        let (cpu0, t0) = (process_cpu(), Instant::now());
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!(
            "CPU of this process while 1,000 futures wait on a standing queue: {:.0} % of one \
             CPU",
            100.0 * (process_cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        holder.send("go");
        for t in tasks {
            t.await.unwrap();
        }
        let waited = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let (max, beats) = beat.await.unwrap();
        waiter.expect("got died=false");
        (max, beats, waited)
    });
    holder.expect("released");
    println!(
        "1,000 tasks served in {waited:?}; heartbeat: {beats} beats of 1 ms, largest gap \
         {max_gap:?}"
    );
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        (0..1000).collect::<Vec<_>>(),
        "served in arrival order"
    );
    assert!(
        max_gap < Duration::from_millis(500),
        "the executor froze for {max_gap:?}"
    );
    let st = lt.status().unwrap();
    assert!(st.queue.is_empty() && st.holders.is_empty(), "{st}");
}

/// CPU time used by this process so far (user + system).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Polls `fut` once with the task's own context, expecting it to be pending.
async fn poll_pending<F: Future + Unpin>(fut: &mut F)
where
    F::Output: std::fmt::Debug,
{
    std::future::poll_fn(|cx| {
        match Pin::new(&mut *fut).poll(cx) {
            Poll::Pending => {}
            Poll::Ready(out) => panic!("granted behind a held token: {out:?}"),
        }
        Poll::Ready(())
    })
    .await
}

#[test]
fn a_cancel_storm_of_1000_futures_leaves_an_empty_queue_and_no_reclaim() {
    let (lt, name) = table("rt-storm");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let rt = multi_thread();
    let mut rng = Rng::new();
    let counts = Arc::new(Mutex::new(BTreeMap::<&str, usize>::new()));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (lt, counts) = (Arc::clone(&lt), Arc::clone(&counts));
            let (mode, delay, polls) = (
                rng.below(5),
                Duration::from_micros(rng.below(3000)),
                rng.below(4),
            );
            tasks.push(tokio::spawn(async move {
                let how = match mode {
                    0 => {
                        // Plain drop after a few polls (none: never queued).
                        let mut f = lt.token_lock_owned_async();
                        for _ in 0..polls {
                            poll_pending(&mut f).await;
                            tokio::task::yield_now().await;
                        }
                        drop(f);
                        "drop"
                    }
                    1 => {
                        let r = tokio::time::timeout(delay, lt.token_lock_owned_async()).await;
                        assert!(r.is_err(), "granted behind a held token");
                        "timeout"
                    }
                    2 => {
                        tokio::select! {
                            r = lt.token_lock_async() => panic!("granted: {r:?}"),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        "select"
                    }
                    3 => {
                        // A task aborted while its future is pending.
                        let f = lt.lock_owned_async(Share::Shared, lockticket::Patience::Forever);
                        let t = tokio::spawn(f);
                        tokio::time::sleep(delay).await;
                        t.abort();
                        assert!(t.await.unwrap_err().is_cancelled());
                        "abort"
                    }
                    _ => {
                        // A request with a deadline of its own, dropped by an outer timeout
                        // before it (or ended by it).
                        let r = tokio::time::timeout(
                            delay,
                            lt.request().shared().timeout(delay * 2).lock_async(),
                        )
                        .await;
                        assert!(!matches!(r, Ok(Ok(Some(_)))), "granted: {r:?}");
                        "outer-timeout"
                    }
                };
                *counts.lock().unwrap().entry(how).or_default() += 1;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    println!("cancelled: {:?}", counts.lock().unwrap());
    let st = lt.status().unwrap();
    assert!(st.queue.is_empty(), "a dropped future left a request: {st}");
    assert_eq!(st.holders.len(), 1, "{st}");
    // A blocking waiter in another process is granted at once, without a reclaim.
    let mut waiter = Helper::spawn("wait", &[&name]);
    waiter.expect("waiting");
    wait_until("the waiter queued", || queued(&lt) == 1);
    holder.send("go");
    holder.expect("released");
    waiter.expect("got died=false");
    let st = lt.status().unwrap();
    assert_eq!(st.reclaimed_slots, 0, "nothing had to be reclaimed: {st}");
}

#[test]
fn fifo_holds_across_async_tasks_and_blocking_threads_of_three_processes() {
    let (lt, name) = table("rt-fifo");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let dir = Scratch::new("rt-fifo");
    let (order, counter) = (dir.join("order"), dir.join("counter"));
    let (o, c) = (order.to_str().unwrap(), counter.to_str().unwrap());
    let mut helpers = [
        Helper::spawn("fifo", &[&name, o, c]),
        Helper::spawn("fifo", &[&name, o, c]),
    ];
    let rt = multi_thread();
    let mut mine = Takers::default();
    // This process holds the token while everybody queues.
    let first = lt.token_lock().unwrap();
    let first_fence = first.fencing_token();
    let mut rng = Rng::new();
    const N: u64 = 48;
    for k in 0..N {
        // Every kind of taker in every process, in a random mix.
        let n = match rng.below(6) {
            0 => mine.queue_async(&rt, &lt, &order, &counter),
            1 => mine.queue_blocking(&lt, &order, &counter),
            w => {
                let h = &mut helpers[(w as usize - 2) / 2];
                h.send(if w % 2 == 0 { "async" } else { "block" });
                h.expect("queued").parse().unwrap()
            }
        };
        assert_eq!(n, k);
    }
    assert_eq!(queued(&lt) as u64, N);
    first.unlock().unwrap();
    mine.join(&rt);
    for h in &mut helpers {
        h.send("end");
        h.expect("done");
    }
    let lines: Vec<(u64, u64)> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, f) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), f.parse().unwrap())
        })
        .collect();
    let arrivals: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(
        arrivals,
        (0..N).collect::<Vec<_>>(),
        "granted in arrival order"
    );
    let mut last = first_fence;
    for (a, f) in lines {
        assert!(f > last, "fencing token {f} of taker {a} after {last}");
        last = f;
    }
}

#[test]
fn smol_and_a_plain_block_on_drive_the_same_futures() {
    let (lt, name) = table("rt-smol");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    let held_fence: u64 = holder.expect("held died=false fence=").parse().unwrap();
    // smol: a future that gives up (smol's timer wins the race) leaves nothing.
    let gave_up = smol::block_on(smol::future::or(
        async { Some(lt.token_lock_async().await) },
        async {
            smol::Timer::after(Duration::from_millis(20)).await;
            None
        },
    ));
    assert!(gave_up.is_none());
    assert_eq!(queued(&lt), 0);
    // smol: waits, then is granted when the other process releases.
    let lt2 = Arc::clone(&lt);
    let by_smol = std::thread::spawn(move || smol::block_on(lt2.token_lock_owned_async()));
    wait_until("the smol future queued", || queued(&lt) == 1);
    holder.send("go");
    holder.expect("released");
    let g = by_smol.join().unwrap().unwrap().unwrap();
    assert!(!g.previous_holder_died());
    assert!(g.fencing_token() > held_fence);
    // futures::executor::block_on: queued behind the guard smol's task took.
    let lt2 = Arc::clone(&lt);
    let by_futures =
        std::thread::spawn(move || futures_executor::block_on(lt2.token_lock_shared_async()));
    wait_until("the futures-executor future queued", || queued(&lt) == 1);
    let smol_fence = g.fencing_token();
    g.unlock().unwrap();
    let g = by_futures.join().unwrap().unwrap();
    assert_eq!(g.share(), Share::Shared);
    assert!(g.fencing_token() > smol_fence);
    // smol's own executor, a spawned task: a shared request beside the shared holder.
    let ex = smol::LocalExecutor::new();
    let beside = smol::block_on(ex.run(ex.spawn(lt.token_lock_shared_async()))).unwrap();
    assert_eq!(lt.status().unwrap().holders.len(), 2);
    drop((g, beside));
    assert!(lt.try_token_lock().unwrap().is_some());
}

#[test]
fn a_sigkilled_process_with_pending_futures_and_a_held_async_guard_is_reclaimed() {
    let (lt, name) = table("rt-kill");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let mut doomed = Helper::spawn("async-hold", &[&name]);
    let doomed_fence: u64 = doomed.expect("held fence=").parse().unwrap();
    doomed.expect("pending");
    wait_until("10 doomed futures queued", || queued(&lt) == 10);
    let mut survivor = Helper::spawn("async-wait", &[&name]);
    survivor.expect("pending");
    wait_until("5 more queued", || queued(&lt) == 15);
    let lt2 = Arc::clone(&lt);
    let last = std::thread::spawn(move || {
        let g = lt2.token_lock().unwrap();
        (g.previous_holder_died(), g.fencing_token())
    });
    wait_until("the blocking waiter queued", || queued(&lt) == 16);
    doomed.kill();
    let mut fence = doomed_fence;
    for i in 0..5 {
        let got = survivor.expect("got died=");
        let (died, f) = got.split_once(" fence=").unwrap();
        assert_eq!(died == "true", i == 0, "grant {i}: died={died}");
        let f: u64 = f.parse().unwrap();
        assert!(f > fence, "fencing token {f} after {fence}");
        fence = f;
    }
    survivor.expect("done");
    let (died, f) = last.join().unwrap();
    assert!(!died);
    assert!(f > fence);
    let st = lt.status().unwrap();
    assert!(st.queue.is_empty() && st.holders.is_empty(), "{st}");
}

#[test]
fn fencing_tokens_strictly_increase_across_async_and_blocking_grants() {
    let (lt, name) = table("rt-fence");
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let rt = current_thread();
    let mut fences = Vec::new();
    let noop = Waker::noop();
    for round in 0..5 {
        fences.push(lt.token_lock().unwrap().fencing_token());
        fences.push(rt.block_on(lt.token_lock_async()).unwrap().fencing_token());
        fences.push(
            rt.block_on(lt.token_lock_owned_async())
                .unwrap()
                .unwrap()
                .fencing_token(),
        );
        fences.push(
            smol::block_on(lt.token_lock_shared_async())
                .unwrap()
                .fencing_token(),
        );
        fences.push(lt.token_lock_shared().unwrap().fencing_token());
        // Polled once with a no-op waker: a free token is granted at the first poll.
        let mut f = Box::pin(lt.request().no_wait().lock_async());
        match f.as_mut().poll(&mut Context::from_waker(noop)) {
            Poll::Ready(Ok(Some(g))) => fences.push(g.fencing_token()),
            other => panic!("round {round}: {other:?}"),
        }
        // A holder in another process SIGKILLed: the reclaim's grant goes on counting.
        let mut holder = Helper::spawn("hold", &[&name]);
        let f: u64 = holder.expect("held died=false fence=").parse().unwrap();
        fences.push(f);
        let lt2 = Arc::clone(&lt);
        let after = std::thread::spawn(move || {
            let g = futures_executor::block_on(lt2.token_lock_owned_async())
                .unwrap()
                .unwrap();
            (g.previous_holder_died(), g.fencing_token())
        });
        wait_until("the future queued", || queued(&lt) == 1);
        holder.kill();
        let (died, f) = after.join().unwrap();
        assert!(died, "the next holder is told");
        fences.push(f);
    }
    println!("fencing tokens: {fences:?}");
    for w in fences.windows(2) {
        assert!(w[1] > w[0], "{fences:?}");
    }
}
