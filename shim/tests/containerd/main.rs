//! The shim under real containerd 2.x, 1.7 and 1.6 from the test bed: `ctr run` of images
//! our own code writes (`testbed::oci`), with Wasm built here from source.
//! Every test runs once per containerd version, each on its own private containerd.

mod fixtures;
mod harness;
mod http;
mod isolation;
mod lifecycle;
mod load;
mod network;
mod restart;
mod run;

/// Generates one `#[test]` per containerd version for each listed `fn(DebPackage)`.
macro_rules! on_every_containerd {
    ($($name:ident),* $(,)?) => {
        mod containerd_2 {
            $( #[test] fn $name() { super::$name(testbed::versions::CONTAINERD_2) } )*
        }
        mod containerd_1_7 {
            $( #[test] fn $name() { super::$name(testbed::versions::CONTAINERD_1_7) } )*
        }
        mod containerd_1_6 {
            $( #[test] fn $name() { super::$name(testbed::versions::CONTAINERD_1_6) } )*
        }
    };
}
pub(crate) use on_every_containerd;
