//! The models clients train: a multilayer perceptron and a small
//! convolutional network for image classification, on burn's `flex` CPU
//! backend.
//!
//! Both are burn [`Module`]s, so the SDK's `burn` feature turns them into
//! the flat parameter vectors secure aggregation sums
//! ([`tessera_client::burn`]), with PyTorch's names and layouts (`fc1.weight`
//! as `[out, in]`; the [`Net`] variant is not part of the name), so a model
//! the demo trains loads into the equivalent `torch.nn` module (listed in
//! docs/models.md). [`Net`] wraps either, so the training loop and the demo
//! are written once.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Which architecture to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// Pixels -> `hidden` ReLU units -> classes.
    Mlp {
        /// Width of the hidden layer.
        hidden: usize,
    },
    /// Two 3x3 convolutions (8 and 16 channels, ReLU), average-pooled to
    /// 4x4, then a linear layer to the classes.
    Cnn,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelKind::Mlp { hidden } => write!(f, "mlp (hidden {hidden})"),
            ModelKind::Cnn => f.write_str("cnn"),
        }
    }
}

/// A two-layer perceptron.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(images)))
    }
}

/// A small convolutional network.
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
    height: usize,
    width: usize,
}

impl Cnn {
    fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        let [batch, _] = images.dims();
        let x = images.reshape([batch, 1, self.height, self.width]);
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = self.pool.forward(x);
        self.fc.forward(x.reshape([batch, 16 * 4 * 4]))
    }
}

/// Either model, so the training code is written once.
// One Net per training call, moved a handful of times: the size gap
// between variants costs nothing worth a Box (which burn's derive would
// have to see through).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    /// See [`Mlp`].
    Mlp(Mlp),
    /// See [`Cnn`].
    Cnn(Cnn),
}

impl Net {
    /// A freshly initialised model for `height x width` images and
    /// `classes` classes, on `device` (use an autodiff device to train).
    /// burn draws the initial weights from the device's seeded generator
    /// ([`Device::seed`]), so every process that seeds alike builds the
    /// same model.
    pub fn new(
        kind: ModelKind,
        height: usize,
        width: usize,
        classes: usize,
        device: &Device,
    ) -> Net {
        match kind {
            ModelKind::Mlp { hidden } => Net::Mlp(Mlp {
                fc1: LinearConfig::new(height * width, hidden).init(device),
                fc2: LinearConfig::new(hidden, classes).init(device),
            }),
            ModelKind::Cnn => Net::Cnn(Cnn {
                conv1: Conv2dConfig::new([1, 8], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                conv2: Conv2dConfig::new([8, 16], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                pool: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
                fc: LinearConfig::new(16 * 4 * 4, classes).init(device),
                height,
                width,
            }),
        }
    }

    /// Class scores (logits), `[batch, classes]`, for `[batch, pixels]`.
    pub fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward(images),
            Net::Cnn(c) => c.forward(images),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_client::burn::{dim, flatten, load_flat, tensors};
    use tessera_client::{ClientError, GlobalModel, NamedTensor};

    fn kinds() -> [(ModelKind, usize); 3] {
        [
            (ModelKind::Mlp { hidden: 32 }, 8),
            (ModelKind::Cnn, 8),
            (ModelKind::Cnn, 28),
        ]
    }

    #[test]
    fn every_parameter_round_trips_bit_for_bit() {
        let device = Device::flex();
        for (kind, side) in kinds() {
            device.seed(3);
            let trained = Net::new(kind, side, side, 10, &device);
            let flat = flatten(&trained);
            assert_eq!(flat.len(), dim(&trained), "{kind}");
            assert_eq!(
                flat.len(),
                trained.num_params(),
                "{kind}: every parameter is sent"
            );
            // Into a model initialised differently, and back.
            device.seed(4);
            let fresh = Net::new(kind, side, side, 10, &device);
            assert_ne!(flatten(&fresh), flat);
            let loaded = load_flat(fresh, &flat).unwrap();
            let again = flatten(&loaded);
            assert!(
                again
                    .iter()
                    .zip(&flat)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kind}"
            );
            // And through a published model, names and shapes checked.
            let published = GlobalModel {
                version: 2,
                round: 1,
                epsilon: 0.0,
                delta: 0.0,
                epsilon_against: None,
                proximal_mu: 0.0,
                tensors: tensors(&trained),
            };
            let names: Vec<&str> = published.tensors.iter().map(|t| t.name.as_str()).collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{kind}: {names:?}");
            device.seed(5);
            let via_model = published
                .load_into(Net::new(kind, side, side, 10, &device))
                .unwrap();
            assert_eq!(flatten(&via_model), flat, "{kind}");
            // The same output for the same input: the loaded model is the
            // trained one.
            let x = Tensor::<2>::ones([2, side * side], &device);
            let a = trained.forward(x.clone()).into_data();
            let b = via_model.forward(x).into_data();
            assert_eq!(a, b, "{kind}");
        }
    }

    /// The exported tensors are what `torch.nn` modules of the same
    /// structure hold in their `state_dict`: names without burn's enum
    /// variant, `Linear` weights `[out, in]` (so `y = x W^T + b`, computed
    /// here by hand from the exported values, is burn's forward), and
    /// convolutions as burn has them (`[out, in, kh, kw]`, PyTorch's too).
    #[test]
    fn exported_tensors_have_pytorchs_names_and_layouts() {
        let device = Device::flex();
        device.seed(7);
        let (hidden, side, classes) = (5, 3, 4);
        let net = Net::new(ModelKind::Mlp { hidden }, side, side, classes, &device);
        let exported = tensors(&net);
        let layout: Vec<(&str, &[usize])> = exported
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            layout,
            [
                ("fc1.bias", &[hidden][..]),
                ("fc1.weight", &[hidden, side * side]),
                ("fc2.bias", &[classes]),
                ("fc2.weight", &[classes, hidden]),
            ]
        );
        let linear = |w: &NamedTensor, b: &NamedTensor, x: &[f32]| -> Vec<f32> {
            let (out, inp) = (w.shape[0], w.shape[1]);
            (0..out)
                .map(|o| b.values[o] + (0..inp).map(|i| w.values[o * inp + i] * x[i]).sum::<f32>())
                .collect()
        };
        let x: Vec<f32> = (0..side * side).map(|i| i as f32 / 7.0 - 0.5).collect();
        let h: Vec<f32> = linear(&exported[1], &exported[0], &x)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let by_hand = linear(&exported[3], &exported[2], &h);
        let input = Tensor::<2>::from_data(TensorData::new(x, [1, side * side]), &device);
        let burn_out = net
            .forward(input)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in by_hand.iter().zip(&burn_out) {
            assert!((a - b).abs() < 1e-5, "{by_hand:?} vs {burn_out:?}");
        }

        let cnn = Net::new(ModelKind::Cnn, 8, 8, 10, &device);
        let layout: Vec<(String, Vec<usize>)> = tensors(&cnn)
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        let want: Vec<(String, Vec<usize>)> = [
            ("conv1.bias", vec![8]),
            ("conv1.weight", vec![8, 1, 3, 3]),
            ("conv2.bias", vec![16]),
            ("conv2.weight", vec![16, 8, 3, 3]),
            ("fc.bias", vec![10]),
            ("fc.weight", vec![10, 16 * 4 * 4]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s))
        .collect();
        assert_eq!(layout, want);
    }

    /// A model written in PyTorch's layout (as `tessera model get` saves a
    /// published one, or as a `state_dict` exported from `torch.nn`) loads
    /// into the burn module and back out unchanged.
    #[test]
    fn a_pytorch_layout_model_loads_and_exports_unchanged() {
        let device = Device::flex();
        let net = Net::new(ModelKind::Mlp { hidden: 3 }, 2, 2, 2, &device);
        // fc1.weight [3, 4] with each value naming its place: out*10 + in.
        let mut published = tensors(&net);
        for t in &mut published {
            let cols = t.shape.get(1).copied().unwrap_or(1);
            for (k, v) in t.values.iter_mut().enumerate() {
                *v = ((k / cols) * 10 + k % cols) as f32;
            }
        }
        let model = GlobalModel {
            version: 1,
            round: 0,
            epsilon: 0.0,
            delta: 0.0,
            epsilon_against: None,
            proximal_mu: 0.0,
            tensors: published.clone(),
        };
        let loaded = model.load_into(net).unwrap();
        assert_eq!(tensors(&loaded), published);
        // burn holds fc1's weight [in, out]: row i, column o is out*10 + in.
        let Net::Mlp(mlp) = &loaded else {
            unreachable!()
        };
        let burn_weight = mlp
            .fc1
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(mlp.fc1.weight.val().dims(), [4, 3]);
        assert_eq!(burn_weight[3 + 2], 21.0, "in 1, out 2");
    }

    #[test]
    fn a_model_of_another_architecture_is_refused() {
        let device = Device::flex();
        let mlp = Net::new(ModelKind::Mlp { hidden: 32 }, 8, 8, 10, &device);
        let cnn = Net::new(ModelKind::Cnn, 8, 8, 10, &device);
        let published = GlobalModel {
            version: 7,
            round: 6,
            epsilon: 0.0,
            delta: 0.0,
            epsilon_against: None,
            proximal_mu: 0.0,
            tensors: tensors(&mlp),
        };
        let err = published.load_into(cnn).unwrap_err();
        assert!(matches!(err, ClientError::ModelMismatch { .. }), "{err:?}");
        let wider = Net::new(ModelKind::Mlp { hidden: 33 }, 8, 8, 10, &device);
        assert!(
            published
                .load_into(wider)
                .unwrap_err()
                .to_string()
                .contains("fc1")
        );
        assert!(load_flat(mlp, &[0.0; 3]).is_err());
    }
}
