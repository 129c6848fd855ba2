//! Arbitrary bytes through `ChannelData::parse`; what parses re-encodes to the same
//! bytes (up to the optional padding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ice::channel::{self, ChannelData, Padding};

fuzz_target!(|data: &[u8]| {
    let Ok(cd) = ChannelData::parse(data) else {
        return;
    };
    assert!((0x4000..=0x7FFF).contains(&cd.channel().get()));
    assert!(
        data.len() >= 4 + cd.data().len() && data.len() <= 4 + channel::padded_len(cd.data().len())
    );
    let mut out = Vec::new();
    let n = channel::encode(&mut out, cd.channel(), cd.data(), Padding::Datagram).unwrap();
    assert_eq!(&out[..n], &data[..n]);
    let again = ChannelData::parse(&out).unwrap();
    assert_eq!(again, cd);
});
