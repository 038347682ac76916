//! The payload calls of [`LockTicket`]: bytes, `Pod` values and serde data.

use crate::error::{Error, Result};
use crate::payload;

use super::LockTicket;

impl LockTicket {
    /// Stores `value` as the table's payload (the original's `SetCustomData`). Readers see
    /// either the previous value or this one, whole; a writer killed mid-write leaves the
    /// previous value readable. Concurrent writers are serialised. A value larger than the
    /// table's payload capacity gives [`Error::PayloadTooLarge`] and changes nothing.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let name = format!("doc-payload-{}", std::process::id());
    /// let lt = lockticket::LockTicket::open(&name)?;
    /// let _owner = lt.main_lock(lockticket::Share::Exclusive)?;
    /// lt.set_payload(b"/var/tmp/job-17.json")?;
    /// assert_eq!(lt.payload()?, b"/var/tmp/job-17.json");
    /// lt.clear_payload()?;
    /// assert!(lt.payload()?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn set_payload(&self, value: &[u8]) -> Result<()> {
        let region = self.table()?;
        region
            .with_payload_writer(|p| p.write(value))?
            .map(drop)
            .map_err(|e| self.payload_error(e))
    }

    /// The current payload (the original's `GetCustomData`); empty when never set. Takes no
    /// lock: a complete snapshot, possibly already replaced by a newer one.
    pub fn payload(&self) -> Result<Vec<u8>> {
        self.payload_value().map(|v| v.bytes)
    }

    /// The current payload and its generation (incremented by every write).
    pub fn payload_with_generation(&self) -> Result<(Vec<u8>, u64)> {
        self.payload_value().map(|v| (v.bytes, v.generation))
    }

    fn payload_value(&self) -> Result<payload::PayloadValue> {
        self.table()?
            .payload()
            .read()
            .map_err(|e| self.payload_error(e))
    }

    /// Empties the payload (the original's `SetCustomData(undef)`).
    pub fn clear_payload(&self) -> Result<()> {
        self.set_payload(&[])
    }

    /// Stores a plain-old-data value as the payload.
    pub fn set_payload_pod<T: bytemuck::Pod>(&self, value: &T) -> Result<()> {
        self.set_payload(bytemuck::bytes_of(value))
    }

    /// Reads a plain-old-data value; `None` when the payload is empty, an error when its size
    /// is not `size_of::<T>()`.
    pub fn payload_pod<T: bytemuck::Pod>(&self) -> Result<Option<T>> {
        let bytes = self.payload()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() != std::mem::size_of::<T>() {
            return Err(Error::PayloadEncoding {
                path: self.path.clone(),
                detail: format!(
                    "payload has {} bytes, {} needs {}",
                    bytes.len(),
                    std::any::type_name::<T>(),
                    std::mem::size_of::<T>()
                ),
            });
        }
        Ok(Some(bytemuck::pod_read_unaligned(&bytes)))
    }

    /// Stores a structured value (encoded with postcard).
    #[cfg(feature = "serde")]
    pub fn set_data<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| Error::PayloadEncoding {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.set_payload(&bytes)
    }

    /// Reads a structured value stored by [`set_data`](Self::set_data); `None` when empty.
    #[cfg(feature = "serde")]
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let bytes = self.payload()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| Error::PayloadEncoding {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    fn payload_error(&self, e: payload::PayloadError) -> Error {
        match e {
            payload::PayloadError::TooLarge { len, capacity } => Error::PayloadTooLarge {
                path: self.path.clone(),
                len,
                capacity,
            },
            payload::PayloadError::Busy { attempts } => Error::PayloadBusy {
                path: self.path.clone(),
                attempts,
            },
            other => self.corrupted(&format!("payload: {other}")),
        }
    }
}
