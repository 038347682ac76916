//! The README's "In async code" example, kept compiling here (the README's copy is
//! `ignore`d: the root crate has no tokio). Keep the two identical.

use lockticket::{LockTicket, Share};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> lockticket::Result<()> {
    let lt = Arc::new(LockTicket::open("myapp")?);
    let owner = lt.main_lock_owned(Share::Shared)?;
    {
        // FIFO with every other waiter, blocking or async, of every process; the executor
        // thread never blocks while the task waits.
        let token = lt.token_lock_async().await?;
        if token.previous_holder_died() { /* repair */ }
        let fence = token.fencing_token(); // give it to the storage you protect
        let _ = fence;
    } // released on drop, from whatever thread the task runs on
    // Give up after 50 ms: the request leaves the queue at once, without a trace.
    match lt
        .request()
        .timeout(Duration::from_millis(50))
        .lock_async()
        .await?
    {
        Some(token) => drop(token),
        None => println!("busy"),
    }
    // Cancel-safe: a future dropped by `timeout` or `select!` leaves the queue too.
    let _ = tokio::time::timeout(Duration::from_millis(10), lt.token_lock_async()).await;
    // 'static futures and Send guards on an Arc<LockTicket>, for tokio::spawn.
    let task = tokio::spawn(lt.token_lock_owned_async());
    let token = task.await.expect("task")?.expect("no deadline, so a grant");
    drop(token);
    owner.unlock()?;
    Ok(())
}
