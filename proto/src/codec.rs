//! A prost codec with small per-call buffers, for the Workload API.
//!
//! An agent holds one response stream open per workload (thousands per node), and tonic
//! keeps an encode buffer per stream for its whole life. Workload API messages are a few
//! kilobytes, so starting buffers small instead of at tonic's 8 KiB saves most of that
//! memory; buffers still grow for larger messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial size of the encode buffer; an X509SVIDResponse with one SVID (two certificates,
/// a key and the bundle) is a little larger and grows it once.
const ENCODE_BUFFER_SIZE: usize = 2 * 1024;
/// Initial size of the decode buffer: Workload API requests are tiny.
const DECODE_BUFFER_SIZE: usize = 512;
/// Bytes encoded before a streaming response yields to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with small initial buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(DECODE_BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
