//! Bounds-checked header parsing. Every read goes through `TcContext::load`, which the
//! verifier accepts without manual `data_end` arithmetic.
use aya_ebpf::programs::TcContext;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[derive(Clone, Copy)]
pub struct Class {
    /// 4, 6, or 0 for anything that is not IP.
    pub l3: u8,
    /// IP protocol number (IPv6: the first next-header), 0 when unknown.
    pub l4: u8,
}

pub struct Malformed;

#[inline(always)]
pub fn classify(ctx: &TcContext) -> Result<Class, Malformed> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| Malformed)?);
    match ethertype {
        ETH_P_IP => {
            let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Malformed)?;
            // IHL counts 32-bit words; below 5 the header is invalid.
            if version_ihl >> 4 != 4 || (version_ihl & 0x0f) < 5 {
                return Err(Malformed);
            }
            let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| Malformed)?;
            Ok(Class { l3: 4, l4: proto })
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| Malformed)?;
            Ok(Class { l3: 6, l4: next })
        }
        _ => Ok(Class { l3: 0, l4: 0 }),
    }
}
